"""The escalation orchestration (streams/escalations.py) on the ports' in-memory twins.

Each case runs the real handler on ``MemoryGrantStore`` and ``MemoryBus`` (held to Redis by
tests/contract/test_grant_store.py) with a clock of its own: grant, deny, redelivery, revoked
and quarantined agents, fencing, the audit-first rule, the view rebuild, rate limits, identity
refusals, holds for approval, dead letters and renewals routed to the lifecycle.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.adapters.kafka import codec
from broker.adapters.ports import RateLimit
from broker.adapters.redis import keyspace as keys
from broker.audit.records import ATTEMPT_FENCED
from broker.grants.decide import AUDIT_UNAVAILABLE, HeldForApproval, derive_id
from broker.grants.revocation import plan_revocation
from broker.identity.rules import Principal
from broker.policy import Policy, RiskAction, load_policy
from schemas import topics
from schemas.events import (
    AgentProfile,
    AuditRecord,
    EscalationDecided,
    EscalationRequested,
    GrantIssued,
    ReleaseRequested,
    RenewalRequested,
    ScopeDenial,
    WireModel,
)
from streams.escalations import Escalations, GrantRequestHandler, Holder
from streams.guard import guarded
from streams.telemetry.figures import lap
from streams.worker import Admission, Gate, Incoming, OpenGate, Rebuild, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

POLICIES = Path(__file__).resolve().parents[3] / "policies"
FRAUD = load_policy(POLICIES / "fraud")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
AGENT = "fraud-detector-7"
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
ESC = topics.ESCALATIONS.name


@dataclass
class Clock:
    """The twin store's clock (Redis's clock in production), moved by hand."""

    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    """One worker's escalation path on twins."""

    policy: Policy = FRAUD
    fencing: bool = False
    rebuild: Rebuild | None = None
    holder: Holder | None = None
    gate: Gate | None = None
    grant_requests: GrantRequestHandler | None = None
    built: bool = True
    clock: Clock = field(default_factory=Clock)
    bus: MemoryBus = field(default_factory=MemoryBus)

    def __post_init__(self) -> None:
        self.store = MemoryGrantStore(clock=self.clock, margin_s=600,
                                      view_built_at=T0 if self.built else None)
        self.ctx = WorkerContext(self.policy, self.store, self.bus, margin_s=600,
                                 rebuild=self.rebuild, fencing=self.fencing)
        self.ctx.ready.set()
        self.escalations = Escalations(self.ctx, self.gate or OpenGate(self.policy),
                                       holder=self.holder, grant_requests=self.grant_requests)
        self.offset = 0

    def message(self, event: WireModel, received_at: datetime = T0) -> Incoming:
        """``event`` as Kafka hands it over, appended at ``received_at`` (next offset)."""
        encoded = codec.encode(event, source="/tests/escalations")
        self.offset += 1
        return Incoming(ESC, 0, self.offset, received_at.timestamp(), encoded.key,
                        encoded.value, encoded.headers)

    async def send(self, msg: Incoming) -> None:
        await self.escalations.on_escalation(msg)

    def decisions(self) -> list[EscalationDecided]:
        return [e for e in self.bus.events(topics.DECISIONS.name)
                if isinstance(e, EscalationDecided)]

    def grants(self) -> list[GrantIssued]:
        return [e for e in self.bus.events(topics.GRANTS.name) if isinstance(e, GrantIssued)]

    def audits(self, kind: str = "") -> list[AuditRecord]:
        return [e for e in self.bus.events(topics.AUDIT_RAW.name)
                if isinstance(e, AuditRecord) and kind in ("", e.kind)]


def request(request_id: str = "req-1", agent_id: str = AGENT, **changes: object
            ) -> EscalationRequested:
    fields: dict[str, object] = {
        "request_id": request_id, "agent_id": agent_id, "scopes": (FREEZE, PII),
        "resources": ("acct-1",), "duration_s": 900, "reason": "card-testing pattern",
        "confidence": 0.95, "risk_score": 0.85, "requested_at": T0}
    return EscalationRequested.model_validate(fields | changes)


async def test_a_request_is_audited_first_then_granted_and_announced() -> None:
    """Granted: the audit record is written before the grant, the grant before the decision;
    the grant ends at the append time + the clamped duration; the record is marked published."""
    w = World()
    order: list[str] = []

    async def note(topic: str) -> None:
        order.append(topic)

    w.bus.before_write = note
    await w.send(w.message(request()))
    [decision] = w.decisions()
    [grant] = w.grants()
    assert decision.outcome == "granted" and decision.grant_id == grant.grant_id
    assert grant.expires_at == T0 + timedelta(seconds=20)
    assert decision.consistency_token is not None
    assert order == [topics.AUDIT_RAW.name, topics.GRANTS.name, topics.DECISIONS.name]
    [audit] = w.audits("escalation.decided")
    assert audit.outcome == "granted" and audit.inputs["attempt"] == 0
    recorded = await w.store.recorded(AGENT, "req-1")
    assert recorded is not None and recorded.published and recorded.grant == grant
    assert w.ctx.counters == {"decided_granted": 1}


async def test_an_unknown_agent_is_denied_by_default() -> None:
    """No profile, no grant: the denial is recorded and announced, no grant event."""
    w = World()
    await w.send(w.message(request(agent_id="stranger-1")))
    [decision] = w.decisions()
    assert decision.outcome == "denied" and decision.grant_id is None
    assert w.grants() == []
    assert w.ctx.counters == {"decided_denied": 1}


async def test_a_redelivered_request_mints_no_second_grant() -> None:
    """The same message twice: one grant, one decision; the second is audited as a duplicate."""
    w = World()
    msg = w.message(request())
    await w.send(msg)
    w.clock.now = T0 + timedelta(seconds=5)
    await w.send(msg)
    assert len(w.grants()) == 1 and len(w.decisions()) == 1
    [duplicate] = w.audits("escalation.duplicate")
    assert duplicate.outcome == "duplicate"
    assert w.ctx.counters == {"decided_granted": 1, "duplicates": 1}


async def test_a_request_from_before_a_revocation_is_denied() -> None:
    """A revocation is never undone: a request received before it is denied (rule revocation)."""
    w = World()
    action = RiskAction(revoke=True, rule="revoke-on-anomaly", reason="anomaly")
    plan = plan_revocation("sig-1", AGENT, action, now=T0 + timedelta(seconds=1),
                           max_grant_s=FRAUD.max_grant_duration_s, margin_s=600)
    await w.store.revoke_all(plan)
    w.clock.now = T0 + timedelta(seconds=2)
    await w.send(w.message(request(), received_at=T0))
    [decision] = w.decisions()
    assert decision.outcome == "denied" and {d.rule for d in decision.denied} == {"revocation"}
    assert w.grants() == []


async def test_a_quarantined_agent_is_denied_naming_the_quarantine_rule() -> None:
    """During a quarantine every scope is denied by the rule that quarantined the agent."""
    w = World()
    action = RiskAction(revoke=True, rule="quarantine-on-compromise", reason="compromised",
                        quarantine_s=300)
    plan = plan_revocation("sig-2", AGENT, action, now=T0, max_grant_s=60, margin_s=600)
    await w.store.revoke_all(plan)
    w.clock.now = T0 + timedelta(seconds=10)
    await w.send(w.message(request(), received_at=T0 + timedelta(seconds=10)))
    [decision] = w.decisions()
    assert {d.rule for d in decision.denied} == {"quarantine-on-compromise"}


async def test_a_revocation_between_audit_and_commit_is_decided_again() -> None:
    """A revocation landing after the attempt's audit blocks its commit; the next attempt is
    denied, noting why, and no grant is ever announced."""
    w = World()

    async def revoke_once(topic: str) -> None:
        if topic == topics.AUDIT_RAW.name and not w.audits():
            action = RiskAction(revoke=True, rule="revoke-on-anomaly", reason="anomaly")
            await w.store.revoke_all(plan_revocation(
                "sig-3", AGENT, action, now=T0, max_grant_s=60, margin_s=600))

    w.bus.before_write = revoke_once
    await w.send(w.message(request()))
    attempts = w.audits("escalation.decided")
    assert [a.outcome for a in attempts] == ["granted", "denied"]
    assert attempts[1].inputs["previous_attempt"] == "blocked at commit (revoked)"
    [decision] = w.decisions()
    assert decision.outcome == "denied" and w.grants() == []


async def test_a_partition_claimed_by_a_newer_owner_writes_nothing() -> None:
    """Fenced before anything: no audit, no decision, no record; counted as fenced."""
    w = World(fencing=True)
    await w.ctx.claim([(ESC, 0)])
    await w.store.claim(keys.fence(ESC, 0))  # a newer owner took the partition
    await w.send(w.message(request()))
    assert w.bus.topics == {}
    assert await w.store.recorded(AGENT, "req-1") is None
    assert w.ctx.counters == {"fenced": 1}


async def test_a_partition_lost_during_the_audit_write_voids_the_attempt() -> None:
    """The new owner claims while the attempt's audit is written: nothing is committed or
    announced, and the attempt is voided in the audit (it never took effect)."""
    w = World(fencing=True)
    await w.ctx.claim([(ESC, 0)])

    async def stall(topic: str) -> None:
        if topic == topics.AUDIT_RAW.name and not w.audits():
            await w.store.claim(keys.fence(ESC, 0))

    w.bus.before_write = stall
    await w.send(w.message(request()))
    [attempt] = w.audits("escalation.decided")
    [void] = w.audits(ATTEMPT_FENCED)
    assert void.inputs["voided_audit_id"] == attempt.audit_id
    assert w.decisions() == [] and w.grants() == []
    assert await w.store.recorded(AGENT, "req-1") is None
    assert w.ctx.counters == {"fenced": 1}


async def test_an_unwritable_audit_fails_closed() -> None:
    """The audit write fails: the request is denied (audit-unavailable), nothing is granted,
    and the denial's own record is written once the audit takes writes again."""
    w = World()
    w.bus.fail(topics.AUDIT_RAW.name)
    await w.send(w.message(request()))
    [decision] = w.decisions()
    assert decision.outcome == "denied"
    assert {d.rule for d in decision.denied} == {AUDIT_UNAVAILABLE}
    assert w.grants() == []
    [record] = w.audits("escalation.decided")
    assert record.outcome == "denied" and record.rules == (AUDIT_UNAVAILABLE,)
    assert w.ctx.counters["audit_fail_closed"] == 1


async def test_an_absent_view_is_rebuilt_before_deciding() -> None:
    """No view epoch: the view is rebuilt (once) and the request is then decided."""
    calls: list[int] = []

    async def rebuild() -> int:
        calls.append(1)
        await w.store.mark_built(T0)
        return 0

    w = World(built=False, rebuild=rebuild)
    await w.send(w.message(request()))
    assert calls == [1]
    [decision] = w.decisions()
    assert decision.outcome == "granted"
    assert w.ctx.counters == {"view_rebuilds": 1, "decided_granted": 1}


async def test_a_request_over_the_rate_limit_is_denied_saying_when(tmp_path: Path) -> None:
    """One request a minute for the class: the second is denied by the rate rule, naming when
    a token frees up; the first keeps its grant."""
    bundle = tmp_path / "fraud"
    shutil.copytree(POLICIES / "fraud", bundle)
    text = (bundle / "policy.yaml").read_text()
    text = text.replace("    baseline: [payments:transactions.read]\n",
                        "    baseline: [payments:transactions.read]\n"
                        "    rate_limit: {requests: 1, per: 1m}\n", 1)
    (bundle / "policy.yaml").write_text(text)
    policy = load_policy(bundle)
    assert policy.rate_limit(policy.agent(AGENT)) is not None
    w = World(policy=policy)
    await w.send(w.message(request("req-1")))
    await w.send(w.message(request("req-2")))
    first, second = w.decisions()
    assert first.outcome == "granted" and second.outcome == "denied"
    [denial] = {d.reason for d in second.denied}
    assert "over the rate limit" in denial and "a token frees up in 60000 ms" in denial
    assert w.ctx.counters["rate_limited"] == 1
    # The empty bucket was read with the snapshot: one attempt, audited once, as a denial.
    [attempt] = [a for a in w.audits("escalation.decided") if a.subject_id == "req-2"]
    assert attempt.outcome == "denied"
    assert attempt.inputs["rate_limit"] == "bucket empty, read with the snapshot"


def test_the_bucket_read_with_the_snapshot_matches_the_commit_script() -> None:
    """``RateLimit.wait_ms`` refills like the script: empty, refilled, and never over capacity."""
    rate = RateLimit(capacity=20, per_ms=1000)
    assert rate.wait_ms(None, 5_000) is None  # no bucket yet: full
    assert rate.wait_ms((0.5, 5_000), 5_000) == 25  # half a token: 25 ms to a whole one
    assert rate.wait_ms((0.5, 5_000), 5_025) is None  # refilled at 20/s
    assert rate.wait_ms((0.0, 5_000), 4_000) == 50  # a clock behind the bucket refills nothing
    assert RateLimit().wait_ms((0.0, 5_000), 5_000) is None  # unlimited


@dataclass(frozen=True)
class Verdict:
    """An identity gate's admission (signer and refusal)."""

    signer: Principal | None
    refusal: ScopeDenial | None = None

    def denial(self) -> ScopeDenial | None:
        return self.refusal


class Gatekeeper(OpenGate):
    """An identity gate with a fixed verdict (None: rejected)."""

    def __init__(self, policy: Policy, verdict: Admission | None) -> None:
        super().__init__(policy)
        self.verdict = verdict

    async def admit(self, msg: Incoming, event: WireModel) -> Admission | None:
        return self.verdict


async def test_a_verified_signer_is_recorded_on_grant_and_audit() -> None:
    """The gate's verified signer: its key and the model digest on the grant, ``signed_by``
    in the decision's audit record."""
    w = World(gate=Gatekeeper(FRAUD, Verdict(Principal(AGENT, "agent", "kid-7"))))
    await w.send(w.message(request()))
    [grant] = w.grants()
    profile = FRAUD.agent(AGENT)
    assert isinstance(profile, AgentProfile)
    assert (grant.kid, grant.model_digest) == ("kid-7", profile.model.digest)
    [audit] = w.audits("escalation.decided")
    assert audit.inputs["signed_by"] == {"principal": AGENT, "kid": "kid-7"}


async def test_an_authentic_agent_that_may_not_act_is_denied_with_the_gate_s_reason() -> None:
    """A suspended agent's request is decided: denied by the gate's rule, signer recorded."""
    refusal = ScopeDenial(scope="*", rule="identity:suspended", reason="agent is suspended")
    w = World(gate=Gatekeeper(FRAUD, Verdict(Principal(AGENT, "agent", "kid-7"), refusal)))
    await w.send(w.message(request()))
    [decision] = w.decisions()
    assert {d.rule for d in decision.denied} == {"identity:suspended"}
    assert w.grants() == []


async def test_a_rejected_event_is_not_decided() -> None:
    """Rejected by the identity gate (already audited there): no decision, no record."""
    w = World(gate=Gatekeeper(FRAUD, None))
    await w.send(w.message(request()))
    assert w.bus.topics == {}
    assert await w.store.recorded(AGENT, "req-1") is None


@dataclass
class Approvals:
    """A holder that records what it was asked to hold; ``accept`` False: over the rate."""

    accept: bool = True
    held: list[HeldForApproval] = field(default_factory=list)

    async def hold(self, held: HeldForApproval, rate: RateLimit, now: datetime) -> bool:
        self.held.append(held)
        return self.accept


async def test_a_request_needing_approval_is_held_not_decided() -> None:
    """The policy grants the freeze only on approval: the request is handed to the holder
    (pending event from the same evaluation) and nothing is decided or stored."""
    graduated = load_policy(POLICIES / "graduated")
    holder = Approvals()
    w = World(policy=graduated, holder=holder)
    await w.send(w.message(request(confidence=0.85, risk_score=0.9)))
    [held] = holder.held
    assert held.pending.event.request_id == "req-1" and FREEZE in held.pending.event.scopes
    assert w.decisions() == [] and w.audits() == []
    assert await w.store.recorded(AGENT, "req-1") is None


async def test_a_hold_refused_for_the_rate_limit_is_decided_the_usual_way() -> None:
    """When the holder cannot hold (rate limit), the request is decided: the scope needing
    approval is denied."""
    graduated = load_policy(POLICIES / "graduated")
    w = World(policy=graduated, holder=Approvals(accept=False))
    await w.send(w.message(request(confidence=0.85, risk_score=0.9)))
    [decision] = w.decisions()
    assert FREEZE in {d.scope for d in decision.denied}


async def test_an_undecodable_message_is_dead_lettered_and_audited() -> None:
    """Bad bytes go to the dead-letter topic with their origin, and are audited."""
    w = World()
    msg = Incoming(ESC, 0, 7, T0.timestamp(), AGENT.encode(), b"not json", [])
    await w.send(msg)
    [dead] = w.bus.topics[topics.DEAD_LETTER.name]
    assert dead.value == b"not json"
    [record] = w.audits("message.dead_lettered")
    assert record.subject_id == f"{ESC}/0/7"
    assert w.ctx.counters == {"dead_lettered": 1}


async def test_renewals_and_releases_go_to_the_lifecycle_handler() -> None:
    """A renewal read from the escalation topic is handed over, once admitted."""
    seen: list[str] = []

    async def lifecycle(msg: Incoming, event: RenewalRequested | ReleaseRequested) -> None:
        seen.append(event.request_id)

    w = World(grant_requests=lifecycle)
    release = ReleaseRequested(request_id="rel-1", agent_id=AGENT,
                               grant_id=derive_id("grant", "req-1", AGENT), requested_at=T0)
    await w.send(w.message(release))
    assert seen == ["rel-1"] and w.bus.topics == {}


async def test_a_partition_lost_while_the_audit_write_fails_still_voids_the_attempt() -> None:
    """The attempt's audit write fails (it may land late all the same) while the partition
    moves: nothing is committed, and the attempt it tried to write is voided."""
    w = World(fencing=True)
    await w.ctx.claim([(ESC, 0)])
    w.bus.fail(topics.AUDIT_RAW.name)

    async def stall(topic: str) -> None:
        if topic == topics.AUDIT_RAW.name and not w.audits():
            await w.store.claim(keys.fence(ESC, 0))

    w.bus.before_write = stall
    await w.send(w.message(request()))
    [void] = w.audits(ATTEMPT_FENCED)
    assert void.inputs["voided_audit_id"] == derive_id("audit", "req-1", AGENT)  # attempt 0
    assert w.audits("escalation.decided") == []
    assert w.decisions() == [] and w.grants() == []
    assert await w.store.recorded(AGENT, "req-1") is None


async def test_a_decision_s_time_is_observed_stage_by_stage_in_order() -> None:
    """Through the guard, a granted request is timed once per stage of its path, in the path's
    order; the stages' sum is the time from its append to its handler's end."""
    w = World()
    stages: list[str] = []
    laps = w.ctx.figures.stages
    observe = laps.labels

    def labels(topic: str, stage: str) -> object:
        stages.append(stage)
        assert topic == ESC
        return observe(topic, stage)

    laps.labels = labels  # type: ignore[method-assign]
    appended = datetime.now(UTC) - timedelta(seconds=2)
    await guarded(w.ctx, w.message(request(), received_at=appended), w.send)
    assert stages == ["queued", "verified", "read", "decided", "audited", "committed",
                      "published", "finished"]
    registry = w.ctx.figures.registry
    total = sum(registry.get_sample_value("permbroker_worker_stage_seconds_sum",
                                          {"topic": ESC, "stage": s}) or 0.0 for s in stages)
    assert 2.0 <= total < 60.0
    queued = registry.get_sample_value("permbroker_worker_stage_seconds_sum",
                                       {"topic": ESC, "stage": "queued"})
    assert queued is not None and queued >= 2.0


def test_a_lap_outside_a_handler_observes_nothing() -> None:
    """``lap`` with no message being handled (a timer, a test) is a no-op."""
    figures = World().ctx.figures
    lap("verified")
    assert figures.registry.get_sample_value("permbroker_worker_stage_seconds_count",
                                             {"topic": ESC, "stage": "verified"}) is None
