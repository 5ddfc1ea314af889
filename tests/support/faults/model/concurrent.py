"""Bursts of the property model: several messages at once, run as the worker runs them.

Imports hypothesis, schemas, streams, tests. Escalation-topic messages (requests, renewals,
releases) go through the worker's own per-agent ``Lanes`` (concurrent across agents, in order
per agent) while risk signals are applied one after another beside them, as the escalation and
risk agents of streams/app.py do; a drawn delay before each hand-over varies the interleaving.
What may differ between interleavings is only which side of a concurrent revocation a message
landed on, so the checks hold for every order: grants within the ceiling and never for an agent
blocked before the burst; after it, nothing issued before a revoking signal (or, with a
quarantine, during the burst at all) is live; an own release of a live grant fails only when a
revocation, an expiry or an earlier release in the burst explains it.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from hypothesis import strategies as st
from hypothesis.stateful import rule

from schemas import topics
from schemas.events import (
    EscalationRequested,
    GrantIssued,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    WireModel,
)
from streams.lanes import Lanes
from streams.worker import Incoming
from tests.support.faults.model.spec import (
    AGENTS,
    COUNTS,
    GUARD,
    RULE_MAX_S,
    SCOPE_SETS,
    SIGNAL_PICKS,
    SIGNALS,
    Held,
)

if TYPE_CHECKING:
    from tests.support.faults.model.machine import BrokerModel

KINDS = ("request", "request", "renew", "release", "risk")
ITEM = st.tuples(st.sampled_from(KINDS), st.sampled_from(sorted(AGENTS)), st.integers(0, 10**6),
                 st.sampled_from(SCOPE_SETS), st.sampled_from(SIGNAL_PICKS),
                 st.sampled_from((0, 0, 0, 1, 2, 5)))


@dataclass
class Entry:
    """One message of a burst, what it carries and the delay before it is handed over (ms)."""

    kind: str
    msg: Incoming
    event: WireModel
    delay_ms: int
    held: Held | None = None
    signal: tuple[str, float] | None = None


@dataclass
class Burst:
    """The messages of one burst and the model state they are judged against."""

    model: BrokerModel
    entries: list[Entry] = field(default_factory=list)
    live_before: dict[str, list[Held]] = field(default_factory=dict)
    risk_before: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, name: str, pick: int, scopes: tuple[str, ...],
            signal: tuple[str, float], delay: int) -> None:
        """Build one message (renewals and releases of a live grant of the model, if any)."""
        m, at = self.model, self.model.world.redis_now()
        agent = m.agents[name]
        if kind == "risk":
            self.entries.append(Entry(kind, m._signal(agent, signal, at), signal, delay,
                                      signal=signal))
            return
        if kind == "request":
            req = m.escalation(agent, scopes, True, (3, 20, 900)[pick % 3], 0.95, 0.9)
            msg = m.world.incoming(topics.ESCALATIONS.name, req, at)
            self.entries.append(Entry(kind, msg, req, delay))
            return
        live = m._live(at)
        if not live:
            return
        held = live[pick % len(live)]
        owner = held.grant.agent_id
        event: WireModel = (
            RenewalRequested(request_id=f"ren-{uuid.uuid4()}",
                             agent_id=owner, grant_id=held.grant.grant_id, duration_s=20,
                             reason="burst", confidence=0.95, risk_score=0.9, requested_at=at)
            if kind == "renew" else
            ReleaseRequested(request_id=f"rel-{uuid.uuid4()}",
                             agent_id=owner, grant_id=held.grant.grant_id, requested_at=at))
        self.entries.append(Entry(kind, m.world.incoming(topics.ESCALATIONS.name, event, at),
                                  event, delay, held=held))

    async def run(self) -> None:
        """Hand the messages over as the worker's agents would, concurrently."""
        w = self.model.world
        lanes: Lanes[Incoming] = Lanes(w.escalations.on_escalation)

        async def escalation_agent() -> None:
            for e in (e for e in self.entries if e.kind != "risk"):
                await asyncio.sleep(e.delay_ms / 1000)
                await lanes.submit(e.msg.key, e.msg, lambda: None)
            await lanes.drain()

        async def risk_agent() -> None:
            for e in (e for e in self.entries if e.kind == "risk"):
                await asyncio.sleep(e.delay_ms / 1000)
                await w.risk.on_risk(e.msg)

        await asyncio.gather(escalation_agent(), risk_agent())


@rule(items=st.lists(ITEM, min_size=2, max_size=6))
def burst(self: BrokerModel, items: list[tuple[str, str, int, tuple[str, ...],
                                               tuple[str, float], int]]) -> None:
    """Several messages at once: per-agent lanes beside the risk agent, in any interleaving."""
    COUNTS["rule: burst"] += 1
    b = Burst(self)
    now = self.world.redis_now()
    b.live_before = {a: self._live(now, a) for a in self.cls}
    b.risk_before = dict(self.risk)
    for item in items:
        b.add(*item)
    self.requested += sum(e.kind == "request" for e in b.entries)
    self.sent += sum(e.kind in ("request", "risk") for e in b.entries)
    self.delivered.extend(e.msg for e in b.entries)
    COUNTS["burst messages"] += len(b.entries)
    self.world.run(b.run())
    grants, decisions = self._new(topics.GRANTS.name), self._new(topics.DECISIONS.name)
    issued = [g for g in grants if isinstance(g, GrantIssued)]
    for e in b.entries:
        if isinstance(e.event, EscalationRequested):
            self.check_issued(e.event, e.msg.received_at, issued,
                              risk=b.risk_before.get(e.event.agent_id, 0.0))
    self.absorb(self.world.redis_now(), grants)
    _lifecycle(self, b, decisions)
    _revocations(self, b, issued)


def _answer(decisions: list[WireModel], request_id: str) -> RenewalDecided | ReleaseDecided:
    found = [d for d in decisions if isinstance(d, RenewalDecided | ReleaseDecided)
             and d.request_id == request_id]
    assert len(found) == 1, f"{request_id}: {len(found)} answers, not one"
    return found[0]


def _lifecycle(self: BrokerModel, b: Burst, decisions: list[WireModel]) -> None:
    """Renewals and releases, in lane order: each answered once, and rightly."""
    released: set[str] = set()
    revoked = {e.msg.key for e in b.entries if e.signal and SIGNALS[e.signal] is not None}
    after = self.world.redis_now()  # every answer was given by then
    for e in b.entries:
        if e.held is None or not isinstance(e.event, RenewalRequested | ReleaseRequested):
            continue
        held, gid = e.held, e.event.grant_id
        answer = _answer(decisions, e.event.request_id)
        if isinstance(answer, ReleaseDecided):
            if answer.outcome == "released":
                COUNTS["burst releases done"] += 1
                COUNTS["releases done"] += 1
                assert gid not in released, "one grant released twice"
                held.ended = held.ended or "released"
            else:
                explained = (gid in released or e.msg.key in revoked
                             or held.expires_at <= after + GUARD)
                assert explained, f"the agent could not release its own live grant {gid}"
            released.add(gid)
        elif answer.outcome == "renewed":
            COUNTS["burst renewals allowed"] += 1
            COUNTS["renewals allowed"] += 1
            received = e.msg.received_at
            expected = received + timedelta(
                seconds=min(20, RULE_MAX_S[self.cls[held.grant.agent_id]]))
            assert gid not in released, "renewed a grant released earlier in the burst"
            assert answer.expires_at == expected <= held.cap, (answer.expires_at, expected)
            held.expires_at = expected


def _revocations(self: BrokerModel, b: Burst, issued: list[GrantIssued]) -> None:
    """After the burst nothing a revoking signal covers is live; the model learns the signals."""
    now = self.world.redis_now()
    for e in b.entries:
        if e.signal is None:
            continue
        agent, received = (e.msg.key or b"").decode(), e.msg.received_at
        if self.note_signal(agent, e.signal, received):
            quarantine = SIGNALS[e.signal] or 0
            covered = [*b.live_before.get(agent, []), *(
                self.grants[g.grant_id] for g in issued if g.agent_id == agent
                and (quarantine > 0 or _received(b, g.request_id) <= received))]
            left = [h.grant.grant_id for h in covered if h.live(now + GUARD)]
            assert not left, f"revoked {agent} in a burst, yet {left} still live"


def _received(b: Burst, request_id: str) -> datetime:
    return next(e.msg.received_at for e in b.entries
                if getattr(e.event, "request_id", None) == request_id)
