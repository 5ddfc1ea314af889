"""The stateful model of the broker (hypothesis): rules drive the real worker code, invariants
compare the real Redis store with what the model allows. Imports broker, schemas, tests.

The model is written from the policy text (the fraud policy, see tests/support/faults/bundles.py:
ceilings, rule maxima, caps, quarantines), not from the code under test: it knows which grants
may be live, until when, and checks the store after every step. Every message is signed and
passes the worker's identity gate; forged and replayed messages must be refused by it. Bursts
(tests/support/faults/model/concurrent.py) run several messages at once, as the worker's lanes do.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import ClassVar

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    get_state_machine_test,
    invariant,
    precondition,
    rule,
)

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import ms
from schemas import topics
from schemas.events import (
    AuditRecord,
    EscalationDecided,
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
from tests.support.faults.model import concurrent
from tests.support.faults.model.spec import (
    AGENTS,
    CAP_S,
    CEILING,
    COUNTS,
    ENDS,
    GUARD,
    MAX_WAIT,
    RULE_MAX_S,
    SCOPE_SETS,
    SIGNAL_PICKS,
    SIGNALS,
    Held,
    check_end,
    fitting,
    within,
)
from tests.support.faults.model.world import World, close_store

AGENT = st.sampled_from(sorted(AGENTS))


class BrokerModel(RuleBasedStateMachine):
    """Requests, risk, renewals, releases, expiries, redeliveries, replays, forgeries, bursts
    and rebuilds in any order."""

    make_world: ClassVar[Callable[[], World]]

    def __init__(self) -> None:
        super().__init__()
        self.world = self.make_world()
        self.agents = self.world.agents  # model name -> agent id of this example
        self.cls = {self.agents[a]: c for a, c in AGENTS.items()}  # agent id -> class
        self.grants: dict[str, Held] = {}
        self.blocked_until: dict[str, datetime] = {}  # revocation marker / quarantine end
        self.risk: dict[str, float] = {}
        self.delivered: list[Incoming] = []
        self.remembered = 0  # delivered[remembered:] came after the last wipe (see ``replay``)
        # Requests, and requests plus risk signals, sent by rules and bursts (see ``_requested``);
        # ``sent`` when Redis was last wiped.
        self.requested, self.sent, self.sent_at_wipe = 0, 0, 0
        self.ended_early: dict[str, WireModel] = {}  # ends announced before their grant
        self.seen = {t: 0 for t in (topics.GRANTS.name, topics.DECISIONS.name,
                                    topics.AUDIT_RAW.name)}
        COUNTS["examples"] += 1

    def teardown(self) -> None:
        self.world.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _deliver(self, msg: Incoming) -> None:
        handler = (self.world.risk.on_risk if msg.topic == topics.RISK.name
                   else self.world.escalations.on_escalation)
        self.world.run(handler(msg))

    def _new(self, topic: str) -> list[WireModel]:
        events = self.world.events(topic)
        fresh, self.seen[topic] = events[self.seen[topic]:], len(events)
        return fresh

    def _live(self, now: datetime, agent: str | None = None) -> list[Held]:
        return [h for h in self.grants.values() if not h.ended and h.expires_at > now
                and (agent is None or h.grant.agent_id == agent)]

    def _soon(self) -> list[datetime]:
        """Expiries of live grants that fall within the longest wait the model allows."""
        now = self.world.redis_now()
        return [h.expires_at for h in self._live(now) if h.expires_at <= now + MAX_WAIT]

    def absorb(self, now: datetime, events: list[WireModel] | None = None) -> None:
        """Issued grants join the model; expiry announcements must be for grants really due.

        A revocation racing a decision can be announced before the grant it ended (the risk
        and escalation agents run concurrently): as every consumer of the grant topic does, the
        model remembers the end and applies it when the grant's own event comes.
        """
        for ev in self._new(topics.GRANTS.name) if events is None else events:
            if isinstance(ev, GrantIssued) and ev.grant_id not in self.grants:
                cap = ev.issued_at + timedelta(seconds=CAP_S[self.cls[ev.agent_id]])
                self.grants[ev.grant_id] = Held(ev, ev.expires_at, cap)
                if (early := self.ended_early.pop(ev.grant_id, None)) is not None:
                    COUNTS["ends announced before their grant"] += 1
                    check_end(self.grants[ev.grant_id], early, now)  # type: ignore[arg-type]
            elif isinstance(ev, ENDS) and ev.grant_id in self.grants:
                check_end(self.grants[ev.grant_id], ev, now)
            elif isinstance(ev, ENDS) and not isinstance(ev, GrantExpired):
                self.ended_early[ev.grant_id] = ev

    def _signal(self, agent: str, signal: tuple[str, float], at: datetime) -> Incoming:
        kind, severity = signal
        sig = RiskObserved(signal_id=f"sig-{uuid.uuid4()}", subject_agent_id=agent, kind=kind,
                           severity=severity, source="props", observed_at=at)
        return self.world.incoming(topics.RISK.name, sig, at)

    def note_signal(self, agent: str, signal: tuple[str, float], received: datetime) -> bool:
        """What a signal does in the model; True when it revokes."""
        quarantine = SIGNALS[signal]
        if quarantine is None:
            self.risk[agent] = max(self.risk.get(agent, 0.0), signal[1])
            return False
        COUNTS["revocations"] += 1
        until = received + timedelta(seconds=quarantine)
        self.blocked_until[agent] = max(self.blocked_until.get(agent, until), until)
        return True

    # --- rules: one message at a time ---------------------------------------------------------

    @rule(agent=AGENT, scopes=st.sampled_from(SCOPE_SETS), fit=st.sampled_from((True, True, False)),
          duration=st.sampled_from((1, 2, 3, 20, 900)),
          age=st.sampled_from((0.0, 0.0, 0.0, 0.0, 17.5, 19.5, 30.0)),
          confidence=st.sampled_from((0.95, 0.95, 0.5)),
          risk_score=st.sampled_from((0.9, 0.9, 0.2)))
    def request(self, agent: str, scopes: tuple[str, ...], fit: bool, duration: int,
                age: float, confidence: float, risk_score: float) -> None:
        """An escalation, appended ``age`` seconds ago (a worker catching up reads it late)."""
        COUNTS["rule: request"] += 1
        self.requested += 1
        self.sent += 1
        agent = self.agents[agent]
        req = self.escalation(agent, scopes, fit, duration, confidence, risk_score)
        msg = self.world.incoming(topics.ESCALATIONS.name, req,
                                  self.world.redis_now() - timedelta(seconds=age))
        self.delivered.append(msg)
        self._deliver(msg)
        fresh = self._new(topics.GRANTS.name)
        self.check_issued(req, msg.received_at, [e for e in fresh if isinstance(e, GrantIssued)])
        self.absorb(self.world.redis_now(), fresh)

    def escalation(self, agent: str, scopes: tuple[str, ...], fit: bool, duration: int,
                   confidence: float, risk_score: float) -> EscalationRequested:
        """A request of ``agent``: mostly scopes its class may be granted (else any: ceilings)."""
        if fit:
            scopes = fitting(self.cls[agent], scopes)
        return EscalationRequested(
            request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=tuple(sorted(scopes)),
            resources=("acct-1", "acct-2"), duration_s=duration, reason="props",
            confidence=confidence, risk_score=risk_score, requested_at=self.world.redis_now())

    def check_issued(self, req: EscalationRequested, received: datetime,
                     issued: list[GrantIssued], *, risk: float | None = None) -> None:
        """At most one grant for the request: within the ceiling, not for a blocked agent."""
        mine = [g for g in issued if g.request_id == req.request_id]
        assert len({g.grant_id for g in mine}) <= 1, "two grants for one request"
        COUNTS["requests granted" if mine else "requests denied"] += 1
        for g in mine:
            cls = self.cls[req.agent_id]
            beyond = [s for s in g.scopes if not within(s, CEILING[cls]) or s not in req.scopes]
            assert not beyond, f"granted beyond the ceiling or the request: {beyond}"
            blocked = self.blocked_until.get(req.agent_id)
            assert blocked is None or received > blocked, "granted to a revoked agent"
            if (self.risk.get(req.agent_id, 0.0) if risk is None else risk) >= 0.7:
                assert not any(s.startswith("crm:") for s in g.scopes), "deny rule overridden"
            expected = received + timedelta(seconds=min(req.duration_s, RULE_MAX_S[cls]))
            assert g.expires_at == expected, f"expires_at {g.expires_at} != {expected}"

    @rule(agent=AGENT, signal=st.sampled_from(SIGNAL_PICKS))
    def risk_signal(self, agent: str, signal: tuple[str, float]) -> None:
        """A risk signal: revoking kinds end every live grant of the agent, for good."""
        COUNTS["rule: risk signal"] += 1
        self.sent += 1
        agent = self.agents[agent]
        msg = self._signal(agent, signal, self.world.redis_now())
        self.delivered.append(msg)
        self._deliver(msg)
        if self.note_signal(agent, signal, msg.received_at):
            for held in self._live(msg.received_at, agent):  # what had expired just expires
                held.ended = "revoked"
        self.absorb(self.world.redis_now())

    def pick(self, pick: int, live: bool) -> Held:
        """A grant of the model: a live one when asked and there is one, else any."""
        pool = (self._live(self.world.redis_now()) if live else []) or list(self.grants.values())
        return pool[pick % len(pool)]

    def other(self, agent: str) -> str:
        """Another agent of this example than ``agent``."""
        return next(a for a in sorted(self.cls) if a != agent)

    @precondition(lambda self: _requested(self))
    @rule(pick=st.integers(0, 10**6), live=st.sampled_from((True, True, False)),
          duration=st.sampled_from((2, 5, 20, 60)),
          confidence=st.sampled_from((0.95, 0.95, 0.5)), foreign=st.sampled_from((False, False,
                                                                                 True)))
    def renew(self, pick: int, live: bool, duration: int, confidence: float,
              foreign: bool) -> None:
        """A renewal of a grant (by its agent, or by another agent: never allowed)."""
        if not self.grants:  # every request so far was denied
            return
        COUNTS["rule: renewal"] += 1
        held = self.pick(pick, live)
        owner = held.grant.agent_id
        agent = self.other(owner) if foreign else owner
        ren = RenewalRequested(request_id=f"ren-{uuid.uuid4()}", agent_id=agent,
                               grant_id=held.grant.grant_id, duration_s=duration, reason="props",
                               confidence=confidence, risk_score=0.9,
                               requested_at=self.world.redis_now())
        msg = self.world.incoming(topics.ESCALATIONS.name, ren, self.world.redis_now())
        self.delivered.append(msg)
        before = held.expires_at
        self._deliver(msg)
        answer = [d for d in self._new(topics.DECISIONS.name)
                  if isinstance(d, RenewalDecided) and d.request_id == ren.request_id]
        assert len(answer) == 1, "a renewal without exactly one answer"
        received = msg.received_at
        if answer[0].outcome == "renewed":
            COUNTS["renewals allowed"] += 1
            new = answer[0].expires_at
            assert new is not None and not foreign, "renewed another agent's grant"
            assert not held.ended and before > received, "renewed an ended grant"
            expected = received + timedelta(seconds=min(duration, RULE_MAX_S[self.cls[owner]]))
            assert new == expected and before < new <= held.cap, (new, expected, held.cap)
            held.expires_at = new
        else:
            COUNTS["renewals refused"] += 1
        self.absorb(self.world.redis_now())

    @precondition(lambda self: _requested(self))
    @rule(pick=st.integers(0, 10**6), live=st.sampled_from((True, True, False)),
          foreign=st.sampled_from((False, False, True)))
    def release(self, pick: int, live: bool, foreign: bool) -> None:
        """A release of a grant (its own agent's release of a live grant always succeeds)."""
        if not self.grants:  # every request so far was denied
            return
        COUNTS["rule: release"] += 1
        held = self.pick(pick, live)
        owner = held.grant.agent_id
        agent = self.other(owner) if foreign else owner
        rel = ReleaseRequested(request_id=f"rel-{uuid.uuid4()}", agent_id=agent,
                               grant_id=held.grant.grant_id, requested_at=self.world.redis_now())
        msg = self.world.incoming(topics.ESCALATIONS.name, rel, self.world.redis_now())
        self.delivered.append(msg)
        was_live = not held.ended and held.expires_at > msg.received_at + GUARD
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
        self.absorb(self.world.redis_now())

    def _no_effect(self, what: str) -> None:
        """Nothing granted, decided or re-announced anew (identical copies aside)."""
        grants_before = len(self.grants)
        fresh = self._new(topics.GRANTS.name)
        for g in (e for e in fresh if isinstance(e, GrantIssued)):
            held = self.grants.get(g.grant_id)
            assert held is not None, f"{what} minted a new grant {g.grant_id}"
            assert not held.ended, f"{what} re-announced a {held.ended} grant"
        self.absorb(self.world.redis_now(), fresh)
        assert len(self.grants) == grants_before

    @precondition(lambda self: self.sent > 0)  # every request and signal is delivered
    @rule(pick=st.integers(0, 10**6))
    def redeliver(self, pick: int) -> None:
        """At-least-once delivery: an earlier message again at its own offset (a no-op)."""
        COUNTS["rule: redelivery"] += 1
        self._deliver(self.delivered[pick % len(self.delivered)])
        self._new(topics.DECISIONS.name)
        self._no_effect("a redelivery")

    @precondition(lambda self: self.sent > self.sent_at_wipe)  # delivered since the wipe
    @rule(pick=st.integers(0, 10**6))
    def replay(self, pick: int) -> None:
        """The same signed bytes appended again at a new offset: the gate refuses the replay.

        Only messages first delivered since the last wipe: the gate remembers signatures in
        Redis, and a wipe forgets them (the view's rebuild does not restore them), so a replay of
        an older message within the signature's max age is decided as a new message.
        """
        COUNTS["rule: replay"] += 1
        since = self.delivered[self.remembered:]
        msg = self.world.replayed(since[pick % len(since)])
        self._new(topics.DECISIONS.name)
        self._new(topics.AUDIT_RAW.name)
        self._deliver(msg)
        refused = self.refusals(msg)
        assert refused, "a replay passed the identity gate"
        COUNTS["replays refused by the gate"] += 1
        assert not self._new(topics.DECISIONS.name), "a refused replay was decided"
        self._no_effect("a replay")

    def refusals(self, msg: Incoming) -> list[AuditRecord]:
        """The gate's refusals (identity.rejected audit records) of the message at its origin."""
        return [a for a in self._new(topics.AUDIT_RAW.name) if isinstance(a, AuditRecord)
                and a.kind == "identity.rejected" and a.inputs.get("origin") == msg.origin]

    @rule(agent=AGENT, scopes=st.sampled_from(SCOPE_SETS))
    def forged_request(self, agent: str, scopes: tuple[str, ...]) -> None:
        """A request in one agent's name signed with another's key: refused, nothing decided."""
        COUNTS["rule: forged request"] += 1
        agent = self.agents[agent]
        req = self.escalation(agent, scopes, True, 20, 0.95, 0.9)
        msg = self.world.incoming(topics.ESCALATIONS.name, req, self.world.redis_now(),
                                  forged_by=self.other(agent))
        self._new(topics.DECISIONS.name)
        self._new(topics.AUDIT_RAW.name)
        self._deliver(msg)
        assert self.refusals(msg), "a forged request passed the identity gate"
        assert not [d for d in self._new(topics.DECISIONS.name)
                    if isinstance(d, EscalationDecided) and d.request_id == req.request_id]
        self._no_effect("a forged request")

    burst = concurrent.burst

    @precondition(lambda self: _requested(self))  # not on the clock: replays must agree
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
        self.absorb(self.world.redis_now())

    @precondition(lambda self: _requested(self) or bool(self.blocked_until))
    @rule()
    def rebuild_and_compare(self) -> None:
        """Rebuild the view from the grant topic into db 1: it equals the live view."""
        COUNTS["rule: rebuild compared"] += 1
        now = self.world.redis_now()
        rebuilt = self.world.rebuild_elsewhere(now)
        try:
            for agent in self.cls:
                live = self.world.run(self.world.store.active_grants(agent, now))
                again = self.world.run(rebuilt.active_grants(agent, now))
                settled = now + GUARD
                a = {(g.grant_id, g.expires_at) for g in live if g.expires_at > settled}
                b = {(g.grant_id, g.expires_at) for g in again if g.expires_at > settled}
                assert a == b, f"rebuilt view differs for {agent}: live {a}, rebuilt {b}"
                COUNTS["grants compared after rebuild"] += len(a)
        finally:
            self.world.run(close_store(rebuilt))

    @precondition(lambda self: _requested(self) or bool(self.blocked_until))
    @rule()
    def wipe_and_rebuild(self) -> None:
        """Redis loses everything; the worker rebuilds the view from the grant topic."""
        COUNTS["rule: Redis wiped, view rebuilt"] += 1
        self.remembered, self.sent_at_wipe = len(self.delivered), self.sent
        self.world.sync.flushdb()
        self.world.run(self.world.ctx.ensure_view())

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def store_matches_model(self) -> None:
        """Live grants: within the ceiling, not ended, not expired, expiry unmoved, none lost."""
        COUNTS["invariant checks"] += 1
        now = self.world.redis_now()
        for agent, cls in self.cls.items():
            live = self.world.run(self.world.store.active_grants(agent, now))
            pxats = self.world.pexpiretimes([keys.grant(agent, g.grant_id) for g in live])
            for g, pxat in zip(live, pxats, strict=True):
                held = self.grants.get(g.grant_id)
                assert held is not None, f"unknown grant {g.grant_id} active"
                assert all(within(s, CEILING[cls]) for s in g.scopes), "beyond the ceiling"
                assert not held.ended, f"{held.ended} grant {g.grant_id} still active"
                assert g.expires_at == held.expires_at > now, "expiry moved or passed"
                if pxat == -2:  # expired on Redis's clock since the listing: only if it was due
                    assert held.expires_at <= self.world.redis_now(), "grant key vanished early"
                else:
                    assert pxat == ms(held.expires_at), "grant key's PXAT is not its expires_at"
            wanted = {h.grant.grant_id for h in self._live(now + GUARD, agent)}
            assert wanted <= {g.grant_id for g in live}, "a live grant is missing from Redis"
        ended = [(h.grant.agent_id, gid) for gid, h in self.grants.items() if h.ended]
        assert not any(self.world.pexpiretimes([keys.grant(a, g) for a, g in ended], exists=True))

    @invariant()
    def every_key_has_a_ttl(self) -> None:
        """No per-agent key (grant, marker, record, index) lives forever."""
        assert not self.world.keys_without_ttl()


def _requested(model: BrokerModel) -> bool:
    """Whether a request was sent: what enables the rules that act on grants.

    Preconditions depend on the rules drawn so far, never on what the worker decided: a burst
    runs its messages concurrently, so whether a grant exists after it (and so whether a renewal
    or release is sent) may differ between two runs of one choice sequence, and hypothesis must
    find the same rules enabled whenever it runs a sequence again. A rule on grants finds none
    when every request was denied.
    """
    return model.requested > 0


def run(make_world: Callable[[], World], *, examples: int, steps: int,
        seed: int | None = None, exercise: Sequence[str] = (), rounds: int = 4) -> int:
    """Run the model on fresh worlds, randomized: ``seed`` (else a random one) drives every
    choice; it is printed, and named in the error of a failing run to reproduce it (with
    PERMBROKER_PROPS_SEED), beside hypothesis's own ``@reproduce_failure`` blob.

    A random run may miss an outcome (a short grant that expires before anything ends it is
    drawn rarely): while one of ``exercise`` has not been counted, up to ``rounds`` more runs of
    a fifth of ``examples`` (at least five) follow, seeded ``seed + 1``, ``seed + 2``..., so
    that one seed still reproduces the whole run. COUNTS["rounds"] says how many ran.
    """
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    BrokerModel.make_world = staticmethod(make_world)  # type: ignore[assignment]
    COUNTS.clear()
    size = examples
    for extra in range(rounds + 1):
        if extra and not any(COUNTS[name] == 0 for name in exercise):
            break
        _round(seed, extra, size, steps)
        COUNTS["rounds"] += 1
        size = max(5, examples // 5)
    return seed


def _round(seed: int, extra: int, examples: int, steps: int) -> None:
    """One hypothesis run of ``examples`` examples, seeded ``seed + extra``."""
    test = get_state_machine_test(BrokerModel, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, database=None,
        print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large]))
    print(f"property model: seed {seed} round {extra}, {examples} examples x {steps} steps")
    try:
        hypothesis.seed((seed + extra) % 2**32)(test)()
    except BaseException as exc:
        exc.add_note(f"reproduce: PERMBROKER_PROPS_SEED={seed} (the same sizes), or the "
                     "@reproduce_failure blob hypothesis printed")
        raise
