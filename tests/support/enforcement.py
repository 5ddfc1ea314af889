"""Helpers of the enforcement tests: grants through the worker, a paused Kafka. Imports broker."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.sdk.agent.client import AgentClient
from schemas.events import EscalationDecided

FREEZE, PII, EXPORT = "payments:accounts.freeze", "crm:customer.pii.read", "reports:ledger.export"


def fraud_grant(client: AgentClient, scopes: tuple[str, ...] = (FREEZE, PII)) -> EscalationDecided:
    """A granted fraud escalation (20 s, acct-1 and acct-2)."""
    decision = client.request_escalation(
        list(scopes), resources=["acct-1", "acct-2"], duration_s=900, reason="fraud ring",
        confidence=0.95, risk_score=0.93,
    )
    assert decision.outcome == "granted", decision.reasons
    assert decision.consistency_token
    return decision


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    return inodes


def pid_listening_on(port: int) -> int | None:
    """The local process that listens on ``port`` (Linux /proc), if we can see it."""
    inodes = _listening_inodes(port)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(proc.name)
    return None


@contextlib.contextmanager
def kafka_frozen(bootstrap: str) -> Iterator[None]:
    """SIGSTOP the local Kafka broker (no answer at all, like a partition), SIGCONT after."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    pid = pid_listening_on(int(port)) if host in ("127.0.0.1", "localhost") else None
    if pid is None:
        pytest.skip(f"no local Kafka process listening on {bootstrap} to pause")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)
