"""Degraded mode with Kafka stopped (private stack): a grace namespace keeps grants it already
holds until its grace bound and never past their expiry, a fail-closed namespace denies after the
staleness bound, and a revocation an operator issues while Kafka is down is applied before any
allow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.adapters.crypto.keystore import load_operator
from broker.adapters.kafka.bus import read_all
from broker.config import Settings
from broker.sdk.operator.client import operator_publisher, operator_signal
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import worker_env
from schemas import topics
from schemas.events import AgentRevoked
from tests.support.enforcement import FREEZE, PII
from tests.support.faults import private
from tests.support.faults.bundles import write_bundle
from tests.support.faults.report import Figures
from tests.support.identities import agent_client, shared_trust
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
GRACE = "40s"
BOUND_S = 2.0  # the views' staleness bound (view_proc's too)
Line = dict[str, Any]


class ViewProcess:
    """A crm grant view in its own process (tests/support/faults/view_proc.py), checking agents
    continuously; its lines are collected in order. It can be frozen (SIGSTOP) and thawed."""

    def __init__(self, settings: Settings, agents: list[str]) -> None:
        env = worker_env(settings, role_access(settings, topics.SERVICE))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faults.view_proc", topics.grant_topic("crm").name,
             PII, "acct-1", *agents], env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        self.lines: list[Line] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            try:
                self.lines.append(json.loads(text))
            except json.JSONDecodeError:
                self.lines.append({"raw": text})  # a stray print: kept, never a check

    def wait(self, pred: Callable[[Line], bool], timeout: float, what: str,
             after: int = 0) -> tuple[int, Line]:
        """The first line from index ``after`` on for which ``pred`` holds, and its index."""
        def found() -> tuple[int, Line] | None:
            return next(((i, line) for i, line in enumerate(self.lines[after:], after)
                         if pred(line)), None)
        return wait_until(found, timeout, what, every=0.05)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(30)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _bundle(tmp_path: Path, tag: str) -> Path:
    """The fault bundle with crm in grace and payments failing closed."""
    bundle = write_bundle(tmp_path / "policy", tag, pool=2)
    path = bundle / "policy.yaml"
    policy = yaml.safe_load(path.read_text())
    policy["degraded"] = {"payments": "fail_closed", "crm": {"grace": GRACE}}
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return bundle


def _grant(settings: Settings, agent: str, duration_s: int) -> datetime:
    """A granted freeze + PII read on acct-1; its absolute expiry."""
    with agent_client(settings, agent) as client:
        decision = client.request_escalation(
            [FREEZE, PII], resources=["acct-1"], duration_s=duration_s, reason="fraud ring",
            confidence=0.95, risk_score=0.93)
    assert decision.outcome == "granted" and decision.expires_at is not None, decision.reasons
    return decision.expires_at


def _of(lines: list[Line], agent: str) -> list[Line]:
    return [line for line in lines if line.get("agent") == agent]


@pytest.mark.criterion("D")
@pytest.mark.timeout(900)
def test_kafka_stopped_grace_until_bound_or_expiry_fail_closed_and_revocation_first(
    run_id: str, tmp_path: Path, figures: Figures,
) -> None:
    """Outage 1: crm (grace 40 s) keeps delivered grants, the short one until its expiry, the
    long one until the grace bound; payments (fail closed) denies after its staleness bound.
    Outage 2: an operator revokes an agent while Kafka is down; the view is frozen while Kafka
    returns and takes the revocation; thawed,
    it allows nothing outside grace before it has applied that revocation."""
    tag = f"{run_id}g"
    with private.private_services(_bundle(tmp_path, tag), tag, tmp_path / "w") as (settings, _w):
        long, revoked, short = f"t{tag}-b000", f"t{tag}-b001", f"t{tag}-f000"
        private.register(settings, [long, revoked, short])
        crm = ViewProcess(settings, [long, revoked, short])
        try:
            crm.wait(lambda line: line.get("ready") is True, 120, "the crm view ready")
            with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings),
                           topic=topics.GRANTS_PAYMENTS.name, staleness_bound_s=BOUND_S) as pay:
                assert pay.wait_ready(60)
                _outage_one(settings, crm, pay, figures, long, revoked, short)
            _outage_two(settings, crm, figures, long, revoked)
        finally:
            crm.stop()
    figures.verify()


def _outage_one(settings: Settings, crm: ViewProcess, pay: GrantView, figures: Figures,
                long: str, revoked: str, short: str) -> None:
    long_expiry = _grant(settings, long, 600)
    _grant(settings, revoked, 600)
    short_expiry = _grant(settings, short, 20).timestamp()
    start, _ = crm.wait(lambda line: line.get("agent") == short and line["allowed"], 30,
                        "the short grant at the crm view")
    crm.wait(lambda line: line.get("agent") == long and line["allowed"], 30,
             "the long grant at the crm view", after=start)
    crm.wait(lambda line: line.get("agent") == revoked and line["allowed"], 30,
             "the second long grant at the crm view", after=start)
    wait_until(lambda: pay.allows(long, FREEZE, "acct-1").allowed, 30, "payments view allows")
    killed_at = time.time()
    private.kill("kafka")
    # The fail-closed namespace: denied once the staleness bound has passed, saying so.
    wait_until(lambda: not pay.allows(long, FREEZE, "acct-1").allowed, 30, "payments denies")
    denied = pay.allows(long, FREEZE, "acct-1")
    closed = pay.freshness()
    figures.check("payments (fail closed) after the staleness bound", closed.mode,
                  "fail-closed", denied.unavailable and "(fail closed)" in denied.reason
                  and closed.mode == "fail-closed" and closed.staleness_s is not None
                  and closed.staleness_s > BOUND_S)
    # The grace namespace: the short grant ends at its expiry, inside the grace.
    first, grace = crm.wait(lambda line: line.get("agent") == long and line["mode"] == "grace",
                            30, "the crm view in grace", after=start)
    grace_until = grace["grace_until"]
    assert short_expiry < grace_until < long_expiry.timestamp()
    end, _ = crm.wait(lambda line: line.get("agent") == long and line["mode"] == "fail-closed",
                      120, "the crm grace over", after=first)
    lines = [x for x in crm.lines[start:end + 1] if "agent" in x]
    in_grace = [x for x in lines if x["mode"] == "grace"]
    # Every check from the kill on, in any mode: fresh, then grace with no fail-closed gap.
    figures.equal("crm: delivered grant denied after Kafka stopped, before min(expiry, bound)",
                  sum(1 for x in lines if not x["allowed"] and killed_at <= x["t"] < min(
                      grace_until, short_expiry if x["agent"] == short else grace_until) - 0.25),
                  0)
    figures.equal("crm grace: short grant allowed past its expiry", sum(
        1 for x in _of(lines, short) if x["allowed"] and x["t"] > short_expiry), 0)
    figures.check("crm grace: short grant denied at expiry while still in grace", "yes" if any(
        not x["allowed"] and x["t"] >= short_expiry for x in _of(in_grace, short)) else "no",
        "yes", any(not x["allowed"] and x["t"] >= short_expiry for x in _of(in_grace, short)))
    figures.equal("crm: long grant allowed after the grace bound", sum(
        1 for x in _of(lines, long) if x["allowed"] and x["t"] > grace_until + 0.25), 0)
    assert not lines[-1]["allowed"] and lines[-1]["t"] >= grace_until - 0.25
    assert not pay.allows(long, FREEZE, "acct-1").allowed
    private.restart()
    crm.wait(lambda line: line.get("agent") == long and line["mode"] == "fresh"
             and line["allowed"], 180, "the crm view fresh again", after=end)


def _outage_two(settings: Settings, crm: ViewProcess, figures: Figures, long: str,
                revoked: str) -> None:
    private.kill("kafka")
    mark = len(crm.lines)
    crm.wait(lambda line: line.get("agent") == revoked and line["mode"] == "grace"
             and line["allowed"], 30, "the agent allowed in grace", after=mark)
    crm.signal(signal.SIGSTOP)  # cut off: it cannot see Kafka return before the revocation
    frozen = len(crm.lines)
    try:
        # The operator revokes while Kafka is down: the signed signal waits in the operator's
        # producer and is published the moment Kafka takes it again.
        principal, _key = load_operator(settings.key_path("operator"))
        publisher = operator_publisher(role_access(settings, topics.OPERATOR),
                                       f"/operators/{principal.split(':', 1)[1]}", settings)
        revocation = operator_signal(revoked, "compromised in the outage",
                                     principal.split(":", 1)[1])
        sent = threading.Thread(target=publisher.publish_many,
                                args=(topics.RISK.name, [revocation]), kwargs={"timeout": 300})
        sent.start()
        private.restart()
        sent.join(300)
        assert not sent.is_alive(), "the operator's revocation was not published"
        admin = role_access(settings, topics.ADMIN)
        wait_until(lambda: any(isinstance(r.event, AgentRevoked) and r.event.agent_id == revoked
                               for r in read_all(admin, topics.grant_topic("crm").name,
                                                 trust=None, timeout=30)),
                   300, "the revocation on the crm topic", every=1.0)
    finally:
        crm.signal(signal.SIGCONT)
    applied, _ = crm.wait(lambda line: line.get("revoked") == revoked, 60,
                          "the revocation applied", after=frozen)
    crm.wait(lambda line: line.get("agent") == long and line["mode"] == "fresh"
             and line["allowed"], 60, "the crm view fresh again", after=applied)
    # Thawed, the view allows in grace only until its first word from Kafka (or the bound):
    # from its first check outside grace on, nothing is allowed before the revocation.
    before = crm.lines[frozen:applied]
    reached = next((i for i, x in enumerate(before) if "agent" in x and x["mode"] != "grace"),
                   len(before))
    figures.equal("allows after the view left grace, before the revocation", sum(
        1 for x in before[reached:] if x.get("allowed")), 0)
    figures.equal("allows of the revoked agent after the revocation", sum(
        1 for x in _of(crm.lines[applied:], revoked) if x["allowed"]), 0)
