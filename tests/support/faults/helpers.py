"""Helpers of the fault suite: worker metrics, burst bookkeeping. Imports broker, schemas, tests."""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from collections.abc import Iterable

from schemas.events import EscalationDecided, GrantIssued
from tests.support.taps import Tap

_LINE = re.compile(r'^permbroker_worker_events_total\{kind="([a-z_]+)"\} ([0-9.e+]+)$')


def worker_counters(port: int) -> dict[str, int]:
    """The worker's event counters from its /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if m := _LINE.match(line):
            out[m[1]] = int(float(m[2]))
    return out


def delta(after: dict[str, int], before: dict[str, int], kind: str) -> int:
    """How much one counter grew."""
    return after.get(kind, 0) - before.get(kind, 0)


class Ledger:
    """Decisions and grants seen for a set of request ids (from taps on their topics)."""

    def __init__(self, wanted: Iterable[str], decisions: Tap, grants: Tap) -> None:
        self.wanted = set(wanted)
        self._decisions, self._grants = decisions, grants

    def decisions(self) -> list[EscalationDecided]:
        """Every decision event for a wanted request (duplicates included)."""
        return self._decisions.events(EscalationDecided, lambda d: d.request_id in self.wanted)

    def decided(self) -> set[str]:
        """Wanted request ids with at least one decision."""
        return {d.request_id for d in self.decisions()}

    def issued(self) -> list[GrantIssued]:
        """Every grant.issued event for a wanted request (re-announcements included)."""
        return self._grants.events(GrantIssued, lambda g: g.request_id in self.wanted)

    def conflicts(self) -> tuple[int, int, int]:
        """(requests with two different decisions, requests with two distinct grants, grants
        announced twice with different contents)."""
        by_req: dict[str, set[str]] = defaultdict(set)
        for d in self.decisions():
            # decided_at and consistency_token describe the announcement, not the decision: a
            # decision recovered after a crash re-announces its grant at a new log offset.
            by_req[d.request_id].add(
                d.model_dump_json(exclude={"decided_at", "consistency_token"}))
        grants: dict[str, set[str]] = defaultdict(set)
        bodies: dict[str, set[str]] = defaultdict(set)
        for g in self.issued():
            grants[g.request_id].add(g.grant_id)
            bodies[g.grant_id].add(g.model_dump_json())
        return (
            sum(len(v) > 1 for v in by_req.values()),
            sum(len(v) > 1 for v in grants.values()),
            sum(len(v) > 1 for v in bodies.values()),
        )

    def reannounced(self) -> int:
        """Identical grant.issued events published more than once (at-least-once delivery)."""
        ids = [g.grant_id for g in self.issued()]
        return len(ids) - len(set(ids))
