"""The stateful model of the broker (hypothesis): rules drive the real worker code, invariants
compare the real Redis store with what the model allows. Imports broker, schemas, tests.

The model is written from the policy text (the fraud policy, see tests/support/faults/bundles.py:
ceilings, rule maxima, caps, quarantines), not from the code under test: it knows which grants
may be live, until when, and checks the store after every step. ``COUNTS`` tallies rules and
outcomes for the report.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import ms
from broker.policy import Policy
from schemas import topics
from schemas.events import (
    OPERATOR_REVOKE_KIND,
    EscalationRequested,
    GrantExpired,
    GrantIssued,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RiskObserved,
    WireModel,
)
from streams.worker import Incoming
from tests.support.faults.world import World, close_store
from tests.support.fixtures import keys_without_ttl

FRAUD, REPORT = "fraud-detection", "reporting"
AGENTS = {"pa-fraud-1": FRAUD, "pa-fraud-2": FRAUD, "pa-fraud-3": FRAUD, "pa-report-1": REPORT,
          "pa-report-2": REPORT}
CEILING = {FRAUD: ("payments:transactions.*", "payments:accounts.*", "crm:customer.pii.read"),
           REPORT: ("reports:ledger.*", "reports:summaries.*")}
RULE_MAX_S = {FRAUD: 20, REPORT: 8}  # max_duration of the one granting rule of each class
CAP_S = {FRAUD: 60, REPORT: 8}  # max_total_duration (reporting: not set, so its max_duration)
# Scope sets asked for: most fit one class's granting rule, some reach beyond every ceiling.
SCOPE_SETS = (("payments:accounts.freeze",), ("crm:customer.pii.read", "payments:accounts.freeze"),
              ("reports:ledger.export",), ("crm:customer.pii.read",),
              ("admin:root.all", "reports:ledger.export"), ("payments:accounts.close",),
              ("payments:accounts.freeze", "reports:ledger.export"))
FITTING = {FRAUD: SCOPE_SETS[:2] + SCOPE_SETS[3:4], REPORT: SCOPE_SETS[2:3]}  # a rule grants these
# (kind, severity) -> quarantine seconds if it revokes, None if it only raises live risk.
SIGNALS: dict[tuple[str, float], int | None] = {  # chosen by SIGNAL_PICKS (quarantines rarer)
    ("behaviour_anomaly", 0.95): 600, ("compromise_suspected", 0.5): 3600,
    ("model_changed", 0.1): 0, (OPERATOR_REVOKE_KIND, 1.0): 0,
    ("behaviour_anomaly", 0.75): None, ("behaviour_anomaly", 0.3): None,
}
SIGNAL_PICKS = (("behaviour_anomaly", 0.3), ("model_changed", 0.1), ("behaviour_anomaly", 0.75),
                (OPERATOR_REVOKE_KIND, 1.0), ("behaviour_anomaly", 0.3), ("model_changed", 0.1),
                ("behaviour_anomaly", 0.3), ("behaviour_anomaly", 0.95),
                ("compromise_suspected", 0.5))
GUARD = timedelta(milliseconds=300)  # grants this close to expiry are not compared (clock race)
MAX_WAIT = timedelta(seconds=2.5)  # the longest the model lets time pass in one step
COUNTS: Counter[str] = Counter()


def within(scope: str, patterns: tuple[str, ...]) -> bool:
    """The ceiling test, from the policy text: exact, or a ``.*`` wildcard on the prefix."""
    return any(scope == p or (p.endswith("*") and scope.startswith(p[:-1])) for p in patterns)


@dataclass
class Held:
    """What the model knows of one grant."""

    grant: GrantIssued
    expires_at: datetime
    cap: datetime
    ended: str = ""  # "revoked", "released", or "" (expiry is judged by time)


class BrokerModel(RuleBasedStateMachine):
    """Requests, risk, renewals, releases, expiries, redeliveries, rebuilds in any order."""

    url: ClassVar[str] = ""
    policy: ClassVar[Policy]

    def __init__(self) -> None:
        super().__init__()
        self.world = World(self.url, self.policy)
        self.grants: dict[str, Held] = {}
        self.blocked_until: dict[str, datetime] = {}  # revocation marker / quarantine end
        self.risk: dict[str, float] = {}
        self.delivered: list[Incoming] = []
        self.seen = {t: 0 for t in (topics.GRANTS.name, topics.DECISIONS.name)}
        COUNTS["examples"] += 1

    def teardown(self) -> None:
        self.world.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _deliver(self, msg: Incoming) -> None:
        handler = (self.world.risk.on_risk if msg.topic == topics.RISK.name
                   else self.world.escalations.on_escalation)
        self.world.run(handler(msg))

    def _new(self, topic: str) -> list[WireModel]:
        events = self.world.captured.events(topic)
        fresh, self.seen[topic] = events[self.seen[topic]:], len(events)
        return fresh

    def _live(self, now: datetime, agent: str | None = None) -> list[Held]:
        return [h for h in self.grants.values() if not h.ended and h.expires_at > now
                and (agent is None or h.grant.agent_id == agent)]

    def _soon(self) -> list[datetime]:
        """Expiries of live grants that fall within the longest wait the model allows."""
        now = self.world.redis_now()
        return [h.expires_at for h in self._live(now) if h.expires_at <= now + MAX_WAIT]

    def _absorb_grant_events(self, now: datetime, events: list[WireModel] | None = None) -> None:
        """Issued grants join the model; expiry announcements must be for grants really due."""
        for ev in self._new(topics.GRANTS.name) if events is None else events:
            if isinstance(ev, GrantIssued) and ev.grant_id not in self.grants:
                cls = AGENTS[ev.agent_id]
                cap = ev.issued_at + timedelta(seconds=CAP_S[cls])
                self.grants[ev.grant_id] = Held(ev, ev.expires_at, cap)
            elif isinstance(ev, GrantExpired):
                held = self.grants[ev.grant_id]
                assert not held.ended, f"expiry announced for a {held.ended} grant {ev.grant_id}"
                assert held.expires_at <= now, f"{ev.grant_id} announced expired before its time"
                COUNTS["expiries announced"] += 1

    # --- rules -------------------------------------------------------------------------------

    @rule(agent=st.sampled_from(sorted(AGENTS)),
          scopes=st.sampled_from(SCOPE_SETS), fit=st.sampled_from((True, True, False)),
          duration=st.sampled_from((1, 2, 3, 20, 900)),
          age=st.sampled_from((0.0, 0.0, 0.0, 0.0, 17.5, 19.5, 30.0)),
          confidence=st.sampled_from((0.95, 0.95, 0.5)),
          risk_score=st.sampled_from((0.9, 0.9, 0.2)))
    def request(self, agent: str, scopes: tuple[str, ...], fit: bool, duration: int,
                age: float, confidence: float, risk_score: float) -> None:
        """An escalation, appended ``age`` seconds ago (a worker catching up reads it late)."""
        COUNTS["rule: request"] += 1
        if fit:  # mostly scopes the agent's class may be granted, else anything (ceiling tests)
            fitting = FITTING[AGENTS[agent]]
            scopes = fitting[SCOPE_SETS.index(scopes) % len(fitting)]
        received = self.world.redis_now() - timedelta(seconds=age)
        req = EscalationRequested(
            request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=tuple(sorted(scopes)),
            resources=("acct-1", "acct-2"), duration_s=duration, reason="props",
            confidence=confidence, risk_score=risk_score, requested_at=received)
        msg = self.world.incoming(topics.ESCALATIONS.name, req, received)
        self.delivered.append(msg)
        self._deliver(msg)
        fresh = self._new(topics.GRANTS.name)
        self._check_issued(req, received, [e for e in fresh if isinstance(e, GrantIssued)])
        self._absorb_grant_events(self.world.redis_now(), fresh)

    def _check_issued(self, req: EscalationRequested, received: datetime,
                      issued: list[GrantIssued]) -> None:
        mine = [g for g in issued if g.request_id == req.request_id]
        assert len({g.grant_id for g in mine}) <= 1, "two grants for one request"
        COUNTS["requests granted" if mine else "requests denied"] += 1
        for g in mine:
            cls = AGENTS[req.agent_id]
            beyond = [s for s in g.scopes if not within(s, CEILING[cls]) or s not in req.scopes]
            assert not beyond, f"granted beyond the ceiling or the request: {beyond}"
            blocked = self.blocked_until.get(req.agent_id)
            assert blocked is None or received > blocked, "granted to a revoked agent"
            if self.risk.get(req.agent_id, 0.0) >= 0.7:
                assert not any(s.startswith("crm:") for s in g.scopes), "deny rule overridden"
            expected = received + timedelta(seconds=min(req.duration_s, RULE_MAX_S[cls]))
            assert g.expires_at == expected, f"expires_at {g.expires_at} != {expected}"

    @rule(agent=st.sampled_from(sorted(AGENTS)), signal=st.sampled_from(SIGNAL_PICKS))
    def risk_signal(self, agent: str, signal: tuple[str, float]) -> None:
        """A risk signal: revoking kinds end every live grant of the agent, for good."""
        COUNTS["rule: risk signal"] += 1
        received = self.world.redis_now()
        kind, severity = signal
        sig = RiskObserved(signal_id=f"sig-{uuid.uuid4()}", subject_agent_id=agent, kind=kind,
                           severity=severity, source="props", observed_at=received)
        msg = self.world.incoming(topics.RISK.name, sig, received)
        self.delivered.append(msg)
        self._deliver(msg)
        quarantine = SIGNALS[signal]
        if quarantine is None:
            self.risk[agent] = max(self.risk.get(agent, 0.0), severity)
        else:
            COUNTS["revocations"] += 1
            for held in self._live(received, agent):  # what had expired by then just expires
                held.ended = "revoked"
            until = received + timedelta(seconds=quarantine)
            self.blocked_until[agent] = max(self.blocked_until.get(agent, until), until)
        self._absorb_grant_events(self.world.redis_now())

    def _pick(self, pick: int, live: bool) -> Held:
        """A grant of the model: a live one when asked and there is one, else any."""
        pool = (self._live(self.world.redis_now()) if live else []) or list(self.grants.values())
        return pool[pick % len(pool)]

    @precondition(lambda self: bool(self.grants))
    @rule(pick=st.integers(0, 10**6), live=st.sampled_from((True, True, False)),
          duration=st.sampled_from((2, 5, 20, 60)),
          confidence=st.sampled_from((0.95, 0.95, 0.5)), foreign=st.sampled_from((False, False,
                                                                                 True)))
    def renew(self, pick: int, live: bool, duration: int, confidence: float,
              foreign: bool) -> None:
        """A renewal of a grant (by its agent, or by another agent: never allowed)."""
        COUNTS["rule: renewal"] += 1
        held = self._pick(pick, live)
        owner = held.grant.agent_id
        agent = next(a for a in sorted(AGENTS) if a != owner) if foreign else owner
        received = self.world.redis_now()
        ren = RenewalRequested(request_id=f"ren-{uuid.uuid4()}", agent_id=agent,
                               grant_id=held.grant.grant_id, duration_s=duration, reason="props",
                               confidence=confidence, risk_score=0.9, requested_at=received)
        msg = self.world.incoming(topics.ESCALATIONS.name, ren, received)
        self.delivered.append(msg)
        before = held.expires_at
        self._deliver(msg)
        answer = [d for d in self._new(topics.DECISIONS.name)
                  if isinstance(d, RenewalDecided) and d.request_id == ren.request_id]
        assert len(answer) == 1, "a renewal without exactly one answer"
        if answer[0].outcome == "renewed":
            COUNTS["renewals allowed"] += 1
            new = answer[0].expires_at
            assert new is not None and not foreign, "renewed another agent's grant"
            assert not held.ended and before > received, "renewed an ended grant"
            expected = received + timedelta(seconds=min(duration, RULE_MAX_S[AGENTS[owner]]))
            assert new == expected and before < new <= held.cap, (new, expected, held.cap)
            held.expires_at = new
        else:
            COUNTS["renewals refused"] += 1
        self._absorb_grant_events(self.world.redis_now())

    @precondition(lambda self: bool(self.grants))
    @rule(pick=st.integers(0, 10**6), live=st.sampled_from((True, True, False)),
          foreign=st.sampled_from((False, False, True)))
    def release(self, pick: int, live: bool, foreign: bool) -> None:
        """A release of a grant (its own agent's release of a live grant always succeeds)."""
        COUNTS["rule: release"] += 1
        held = self._pick(pick, live)
        owner = held.grant.agent_id
        agent = next(a for a in sorted(AGENTS) if a != owner) if foreign else owner
        received = self.world.redis_now()
        rel = ReleaseRequested(request_id=f"rel-{uuid.uuid4()}", agent_id=agent,
                               grant_id=held.grant.grant_id, requested_at=received)
        msg = self.world.incoming(topics.ESCALATIONS.name, rel, received)
        self.delivered.append(msg)
        was_live = not held.ended and held.expires_at > received + GUARD
        self._deliver(msg)
        answer = [d for d in self._new(topics.DECISIONS.name)
                  if isinstance(d, ReleaseDecided) and d.request_id == rel.request_id]
        assert len(answer) == 1, "a release without exactly one answer"
        if answer[0].outcome == "released":
            COUNTS["releases done"] += 1
            assert not foreign and not held.ended, "released a foreign or ended grant"
            held.ended = "released"
        else:
            COUNTS["releases refused"] += 1
            assert foreign or not was_live, "the agent could not release its own live grant"
        self._absorb_grant_events(self.world.redis_now())

    @precondition(lambda self: bool(self.delivered))
    @rule(pick=st.integers(0, 10**6))
    def redeliver(self, pick: int) -> None:
        """At-least-once delivery: any earlier message again, unchanged (must be a no-op)."""
        COUNTS["rule: redelivery"] += 1
        grants_before = len(self.grants)
        self._deliver(self.delivered[pick % len(self.delivered)])
        fresh = self._new(topics.GRANTS.name)
        for g in (e for e in fresh if isinstance(e, GrantIssued)):
            held = self.grants.get(g.grant_id)
            assert held is not None, f"a redelivery minted a new grant {g.grant_id}"
            assert not held.ended, f"a redelivery re-announced a {held.ended} grant"
        self._new(topics.DECISIONS.name)
        self._absorb_grant_events(self.world.redis_now(), fresh)
        assert len(self.grants) == grants_before

    @precondition(lambda self: bool(self.grants))  # not on the clock: replays must agree
    @rule()
    def let_time_pass(self) -> None:
        """Wait (bounded) until the next live grant's expiry has passed on Redis's clock."""
        COUNTS["rule: time passes"] += 1
        soon = self._soon()
        if soon:
            until = min(soon) + timedelta(milliseconds=5)
            deadline = time.monotonic() + 5
            while self.world.redis_now() <= until and time.monotonic() < deadline:
                time.sleep(0.01)  # a bounded wait for Redis's clock, which the check re-reads
            COUNTS["expiries waited for"] += 1
            self._sweep()  # the worker's expiry timer ticks while time passes

    @rule()
    def sweep(self) -> None:
        """The worker's expiry sweep: announces due expiries, never an ended grant."""
        COUNTS["rule: expiry sweep"] += 1
        self._sweep()

    def _sweep(self) -> None:
        self.world.run(self.world.lifecycle.sweep())
        self._absorb_grant_events(self.world.redis_now())

    @precondition(lambda self: bool(self.grants or self.blocked_until))
    @rule()
    def rebuild_and_compare(self) -> None:
        """Rebuild the view from the captured grant topic into db 1: it equals the live view."""
        COUNTS["rule: rebuild compared"] += 1
        now = self.world.redis_now()
        rebuilt = self.world.rebuild_elsewhere(now)
        try:
            for agent in AGENTS:
                live = self.world.run(self.world.store.active_grants(agent, now))
                again = self.world.run(rebuilt.active_grants(agent, now))
                settled = now + GUARD
                a = {(g.grant_id, g.expires_at) for g in live if g.expires_at > settled}
                b = {(g.grant_id, g.expires_at) for g in again if g.expires_at > settled}
                assert a == b, f"rebuilt view differs for {agent}: live {a}, rebuilt {b}"
                COUNTS["grants compared after rebuild"] += len(a)
        finally:
            self.world.run(close_store(rebuilt))

    @precondition(lambda self: bool(self.grants or self.blocked_until))
    @rule()
    def wipe_and_rebuild(self) -> None:
        """Redis loses everything; the worker rebuilds the view from the grant topic."""
        COUNTS["rule: Redis wiped, view rebuilt"] += 1
        self.world.sync.flushdb()
        self.world.run(self.world.ctx.ensure_view())

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        """Live grants: within the ceiling, not ended, not expired, expiry unmoved, none lost."""
        COUNTS["invariant checks"] += 1
        now = self.world.redis_now()
        for agent, cls in AGENTS.items():
            live = self.world.run(self.world.store.active_grants(agent, now))
            for g in live:
                held = self.grants.get(g.grant_id)
                assert held is not None, f"unknown grant {g.grant_id} active"
                assert all(within(s, CEILING[cls]) for s in g.scopes), "beyond the ceiling"
                assert not held.ended, f"{held.ended} grant {g.grant_id} still active"
                assert g.expires_at == held.expires_at > now, "expiry moved or passed"
                pxat = self.world.sync.pexpiretime(keys.grant(agent, g.grant_id))
                if pxat == -2:  # expired on Redis's clock since the listing: only if it was due
                    assert held.expires_at <= self.world.redis_now(), "grant key vanished early"
                else:
                    assert pxat == ms(held.expires_at), "grant key's PXAT is not its expires_at"
            wanted = {h.grant.grant_id for h in self._live(now + GUARD, agent)}
            assert wanted <= {g.grant_id for g in live}, "a live grant is missing from Redis"
        for gid, held in self.grants.items():
            if held.ended:
                assert not self.world.sync.exists(keys.grant(held.grant.agent_id, gid))

    @invariant()
    def every_key_has_a_ttl(self) -> None:
        """No per-agent key (grant, marker, record, index) lives forever."""
        assert not keys_without_ttl(self.world.sync)
