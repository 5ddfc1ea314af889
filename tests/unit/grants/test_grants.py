"""Grant math (broker/grants/decide.py) on the real fraud policy: ids, expiry, denials, revoking."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.grants.decide import AgentState, Outcome, decide, derive_id
from broker.grants.revocation import plan_revocation, revoked_events
from broker.policy import RiskAction, RiskContext, load_policy
from schemas.events import (
    MAX_REQUESTED_DURATION_S,
    AgentProfile,
    EscalationRequested,
    GrantIssued,
    RiskObserved,
)

FRAUD = Path(__file__).resolve().parents[3] / "policies" / "fraud"
POLICY = load_policy(FRAUD)
AGENT_ID = "fraud-detector-7"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
FREEZE_RULE = "fraud-freeze-on-pattern"
ANOMALY_RULE = "revoke-on-behaviour-anomaly"
RULE_MAX_S = 20  # fraud-freeze-on-pattern: max_duration 20s
RULE_TOTAL_S = 60  # fraud-freeze-on-pattern: max_total_duration 60s (renewals included)


def fraud_agent() -> AgentProfile:
    agent = POLICY.agent(AGENT_ID)
    assert agent is not None
    return agent


def request(**changes: Any) -> EscalationRequested:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "agent_id": AGENT_ID,
        "scopes": (FREEZE, PII),
        "resources": ("acct-1", "acct-2"),
        "duration_s": 900,
        "reason": "card-testing pattern",
        "confidence": 0.95,
        "risk_score": 0.85,
        "requested_at": NOW,
    }
    return EscalationRequested(**(fields | changes))


def run(
    req: EscalationRequested | None = None,
    *,
    state: AgentState | None = None,
    received_at: datetime = NOW,
    now: datetime | None = None,
    agent: AgentProfile | None = None,
) -> Outcome:
    """Evaluate with the fraud policy at ``now`` and decide, as the worker does."""
    req = req or request()
    now = now or received_at
    profile = agent or fraud_agent()
    evaluation = POLICY.evaluate(req, profile, RiskContext(request=req.risk_score), now)
    return decide(
        req,
        evaluation,
        agent=profile,
        state=state or AgentState(),
        received_at=received_at,
        now=now,
    )


def action_for(kind: str, severity: float = 0.9) -> RiskAction:
    signal = RiskObserved(
        signal_id=f"sig-{kind}",
        subject_agent_id=AGENT_ID,
        kind=kind,
        severity=severity,
        source="anomaly-detector",
        observed_at=NOW,
    )
    action = POLICY.on_risk(signal, fraud_agent(), NOW)
    assert action.revoke, action
    return action


def issued(outcome: Outcome) -> GrantIssued:
    assert outcome.grant is not None, outcome.decision.reasons
    return outcome.grant


def test_fraud_policy_caps_grants_at_twenty_seconds() -> None:
    """The fixture policy is what these tests assume: the longest grant is issued for 20 s.

    Renewals may keep it alive up to ``max_total_duration`` (60 s) in all; that
    cumulative bound is the policy's ``max_grant_duration_s`` (what records and markers outlive).
    """
    longest_issue = max(
        min(r.max_duration_s or POLICY.default_max_duration_s, POLICY.default_max_duration_s)
        for r in POLICY.escalation_rules
    )
    assert longest_issue == RULE_MAX_S
    assert POLICY.max_grant_duration_s == RULE_TOTAL_S


# --- idempotent ids ---------------------------------------------------------------------------


def test_ids_derive_from_the_request_id() -> None:
    """Decision, grant and audit ids are derive_id(kind, request_id, agent_id)."""
    outcome = run()
    agent = outcome.decision.agent_id
    assert outcome.decision.decision_id == derive_id("decision", "req-1", agent)
    assert issued(outcome).grant_id == derive_id("grant", "req-1", agent)
    assert outcome.decision.grant_id == issued(outcome).grant_id
    assert outcome.audit.audit_id == derive_id("audit", "req-1", agent)


def test_redelivery_at_a_later_now_keeps_ids_and_expiry() -> None:
    """The same request decided twice (different now) yields the same ids and expires_at."""
    first = run(now=NOW + timedelta(milliseconds=5))
    again = run(now=NOW + timedelta(seconds=12))
    assert again.decision.decision_id == first.decision.decision_id
    assert issued(again).grant_id == issued(first).grant_id
    assert again.audit.audit_id == first.audit.audit_id
    assert issued(again).expires_at == issued(first).expires_at == NOW + timedelta(seconds=20)
    assert again.decision.expires_at == first.decision.expires_at


def test_denied_redelivery_keeps_the_same_ids() -> None:
    """A redelivery that is now stale is denied under the same decision and audit ids."""
    first = run()
    late = run(now=NOW + timedelta(seconds=RULE_MAX_S))
    assert late.decision.outcome == "denied"
    assert late.decision.decision_id == first.decision.decision_id
    assert late.audit.audit_id == first.audit.audit_id


def test_different_requests_get_different_ids() -> None:
    """Two request ids never share a decision, grant or audit id."""
    one, two = run(request(request_id="req-1")), run(request(request_id="req-2"))
    assert one.decision.decision_id != two.decision.decision_id
    assert issued(one).grant_id != issued(two).grant_id
    assert one.audit.audit_id != two.audit.audit_id


def test_derive_id_is_deterministic_and_kind_separated() -> None:
    """derive_id is a pure function of (kind, source id) and differs across kinds."""
    assert derive_id("grant", "req-1") == derive_id("grant", "req-1")
    assert derive_id("grant", "req-1").startswith("grant-")
    assert derive_id("grant", "req-1") != derive_id("decision", "req-1")


def test_two_agents_with_the_same_request_id_get_distinct_grant_ids() -> None:
    """Agents are distinct identities: one agent's request id cannot collide with another's."""
    other = AgentProfile(
        agent_id="fraud-detector-8",
        agent_class="fraud-detection",
        owner="fraud-ops@example.com",
        model=fraud_agent().model,
        confidence_threshold=0.9,
        baseline=fraud_agent().baseline,
        ceiling=fraud_agent().ceiling,
    )
    mine = run(request(request_id="req-1"))
    theirs = run(request(request_id="req-1", agent_id=other.agent_id), agent=other)
    assert issued(theirs).grant_id != issued(mine).grant_id


# --- absolute expiry --------------------------------------------------------------------------


def test_expiry_is_received_at_plus_the_clamped_duration() -> None:
    """A 900 s request is clamped to the rule's 20 s, counted from received_at, not now."""
    received = NOW - timedelta(seconds=3)
    outcome = run(received_at=received, now=NOW)
    grant = issued(outcome)
    assert grant.expires_at == received + timedelta(seconds=RULE_MAX_S)
    assert outcome.decision.duration_s == RULE_MAX_S
    assert outcome.decision.clamped_by is not None
    assert FREEZE_RULE in outcome.decision.clamped_by
    assert grant.issued_at == NOW


def test_short_request_keeps_its_duration_unclamped() -> None:
    """A request under every limit gets exactly what it asked for, with no clamp."""
    outcome = run(request(duration_s=7))
    assert issued(outcome).expires_at == NOW + timedelta(seconds=7)
    assert outcome.decision.clamped_by is None


@settings(max_examples=200, deadline=None)
@given(
    offset_us=st.integers(min_value=-10 * 365 * 86400 * 10**6, max_value=10 * 365 * 86400 * 10**6),
    lag_ms=st.integers(min_value=0, max_value=60_000),
    duration_s=st.integers(min_value=1, max_value=MAX_REQUESTED_DURATION_S),
)
def test_expiry_never_exceeds_received_at_plus_policy_max(
    offset_us: int, lag_ms: int, duration_s: int
) -> None:
    """For any received_at, lag and duration, a grant ends by received_at + the policy max."""
    received_at = NOW + timedelta(microseconds=offset_us)
    now = received_at + timedelta(milliseconds=lag_ms)
    outcome = run(request(duration_s=duration_s), received_at=received_at, now=now)
    limit = received_at + timedelta(seconds=POLICY.max_grant_duration_s)
    if outcome.grant is None:
        assert outcome.decision.outcome == "denied"
        assert {d.rule for d in outcome.decision.denied} == {"stale-request"}
        assert received_at + timedelta(seconds=min(duration_s, RULE_MAX_S)) <= now
        return
    assert outcome.grant.expires_at == received_at + timedelta(seconds=min(duration_s, RULE_MAX_S))
    assert outcome.grant.expires_at <= limit
    assert outcome.grant.expires_at > now
    assert outcome.decision.expires_at == outcome.grant.expires_at


# --- denials from the agent's state -----------------------------------------------------------


def assert_denied_by(outcome: Outcome, rule: str) -> None:
    assert outcome.grant is None
    decision = outcome.decision
    assert decision.outcome == "denied"
    assert decision.grant_id is None and decision.expires_at is None
    assert decision.granted_scopes == ()
    assert [(d.scope, d.rule) for d in decision.denied] == [(FREEZE, rule), (PII, rule)]
    assert rule in decision.matched_rules
    assert outcome.audit.outcome == "denied"
    assert rule in outcome.audit.rules


def test_quarantine_denies_every_scope_naming_its_rule() -> None:
    """While quarantined, each requested scope is denied by the rule that quarantined the agent."""
    state = AgentState(quarantined_until=NOW + timedelta(minutes=10), quarantine_rule=ANOMALY_RULE)
    outcome = run(state=state)
    assert_denied_by(outcome, ANOMALY_RULE)
    assert "quarantined until" in outcome.decision.denied[0].reason


def test_quarantine_without_a_recorded_rule_is_named_quarantine() -> None:
    """A quarantine whose rule is unknown still names itself."""
    assert_denied_by(
        run(state=AgentState(quarantined_until=NOW + timedelta(seconds=1))), "quarantine"
    )


def test_an_ended_quarantine_no_longer_denies() -> None:
    """At quarantined_until the agent may escalate again."""
    outcome = run(state=AgentState(quarantined_until=NOW, quarantine_rule=ANOMALY_RULE))
    assert outcome.decision.outcome == "granted"


@pytest.mark.parametrize("before", [timedelta(0), timedelta(microseconds=1), timedelta(hours=1)])
def test_request_received_at_or_before_revocation_is_denied(before: timedelta) -> None:
    """A request Kafka received at or before revoked_at is denied with rule 'revocation'."""
    received = NOW - before
    outcome = run(
        state=AgentState(revoked_at=NOW), received_at=received, now=NOW + timedelta(seconds=1)
    )
    assert_denied_by(outcome, "revocation")
    assert "never undone" in outcome.decision.denied[0].reason


def test_request_received_after_revocation_may_be_granted() -> None:
    """A fresh request after the revocation (and no quarantine) is decided by policy."""
    received = NOW + timedelta(microseconds=1)
    outcome = run(state=AgentState(revoked_at=NOW), received_at=received)
    assert outcome.decision.outcome == "granted"


def test_request_whose_grant_would_already_be_expired_is_stale() -> None:
    """Decided after received_at + clamped duration, the request is denied 'stale-request'."""
    outcome = run(received_at=NOW - timedelta(seconds=RULE_MAX_S), now=NOW)
    assert_denied_by(outcome, "stale-request")
    fresh = run(received_at=NOW - timedelta(seconds=RULE_MAX_S - 1), now=NOW)
    assert issued(fresh).expires_at == NOW + timedelta(seconds=1)


def test_policy_denial_passes_through_with_its_rules() -> None:
    """A policy denial (confidence below threshold) keeps the policy's per-scope reasons."""
    outcome = run(request(confidence=0.5))
    assert outcome.grant is None
    assert {d.rule for d in outcome.decision.denied} == {"default-deny"}
    assert outcome.decision.policy_revision == POLICY.revision


def test_audit_records_the_inputs_of_the_decision() -> None:
    """The audit record carries request, agent, times, grant and policy revision to replay it."""
    received = NOW - timedelta(seconds=2)
    outcome = run(received_at=received, now=NOW)
    audit = outcome.audit
    assert audit.kind == "escalation.decided"
    assert audit.agent_id == AGENT_ID and audit.subject_id == "req-1"
    assert audit.policy_revision == POLICY.revision
    assert audit.inputs["request"] == request().model_dump(mode="json")
    assert audit.inputs["agent"] == fraud_agent().model_dump(mode="json")
    assert audit.inputs["received_at"] == received.isoformat()
    assert audit.inputs["now"] == NOW.isoformat()
    assert audit.inputs["grant_id"] == issued(outcome).grant_id


def test_decision_lists_each_matched_rule_once() -> None:
    """matched_rules names every rule once, however many scopes it decided."""
    evaluation = POLICY.evaluate(request(), fraud_agent(), RiskContext(agent=0.9), NOW)
    outcome = decide(
        request(), evaluation, agent=fraud_agent(), state=AgentState(), received_at=NOW, now=NOW
    )
    rules = outcome.decision.matched_rules
    assert len(rules) == len(set(rules)), rules


# --- revocation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "quarantine_s"),
    [
        ("behaviour_anomaly", 600),
        ("compromise_suspected", 3600),
        ("model_changed", 0),
    ],
)
def test_revocation_markers_outlive_the_longest_grant_and_the_quarantine(
    kind: str, quarantine_s: int
) -> None:
    """Markers last past revoked_at + the policy's longest grant, and past any quarantine."""
    action = action_for(kind)
    assert action.quarantine_s == quarantine_s
    plan = plan_revocation(
        f"sig-{kind}",
        AGENT_ID,
        action,
        now=NOW,
        max_grant_s=POLICY.max_grant_duration_s,
        margin_s=60,
    )
    assert plan.revoked_at == NOW and plan.rule == action.rule
    assert plan.marker_until > NOW + timedelta(seconds=POLICY.max_grant_duration_s)
    if quarantine_s:
        assert plan.quarantine_until == NOW + timedelta(seconds=quarantine_s)
        assert plan.marker_until >= plan.quarantine_until
    else:
        assert plan.quarantine_until is None


@settings(max_examples=200, deadline=None)
@given(
    quarantine_s=st.integers(min_value=0, max_value=30 * 86400),
    max_grant_s=st.integers(min_value=1, max_value=MAX_REQUESTED_DURATION_S),
    margin_s=st.integers(min_value=0, max_value=86400),
)
def test_markers_cover_grant_and_quarantine_for_any_limits(
    quarantine_s: int, max_grant_s: int, margin_s: int
) -> None:
    """For any quarantine, grant cap and margin, marker_until covers both."""
    action = RiskAction(True, ANOMALY_RULE, "anomaly", quarantine_s)
    plan = plan_revocation(
        "sig-1", AGENT_ID, action, now=NOW, max_grant_s=max_grant_s, margin_s=margin_s
    )
    assert plan.marker_until >= NOW + timedelta(seconds=max_grant_s + margin_s)
    assert plan.marker_until >= NOW + timedelta(seconds=quarantine_s)


@settings(max_examples=100, deadline=None)
@given(before_ms=st.integers(min_value=0, max_value=3_600_000))
def test_no_request_from_before_a_revocation_is_granted_once_markers_expire(before_ms: int) -> None:
    """After marker_until, a request received before the revocation is stale without markers."""
    plan = plan_revocation(
        "sig-1",
        AGENT_ID,
        action_for("model_changed"),
        now=NOW,
        max_grant_s=POLICY.max_grant_duration_s,
        margin_s=0,
    )
    received = NOW - timedelta(milliseconds=before_ms)
    outcome = run(received_at=received, now=plan.marker_until, state=AgentState())
    assert outcome.grant is None
    assert {d.rule for d in outcome.decision.denied} == {"stale-request"}


def test_operator_revoke_without_rule_is_named_revocation() -> None:
    """A revoke-all whose action names no rule is recorded under 'revocation'."""
    plan = plan_revocation(
        "sig-1", AGENT_ID, RiskAction(True, None, "operator"), now=NOW, max_grant_s=20, margin_s=0
    )
    assert plan.rule == "revocation"


@pytest.mark.parametrize("count", [0, 1, 3])
def test_revoked_events_one_agent_event_and_one_per_grant(count: int) -> None:
    """revoked_events returns one AgentRevoked and one GrantRevoked per grant, in order."""
    grants = tuple(issued(run(request(request_id=f"req-{i}"))) for i in range(count))
    plan = plan_revocation(
        "sig-anomaly",
        AGENT_ID,
        action_for("behaviour_anomaly"),
        now=NOW,
        max_grant_s=POLICY.max_grant_duration_s,
        margin_s=60,
    )
    agent_event, grant_events = revoked_events(plan, grants)
    assert agent_event.agent_id == AGENT_ID
    assert agent_event.grant_ids == tuple(g.grant_id for g in grants)
    assert agent_event.rule == ANOMALY_RULE and agent_event.cause_event_id == "sig-anomaly"
    assert agent_event.quarantined_until == plan.quarantine_until
    assert agent_event.markers_until == plan.marker_until
    assert len(grant_events) == count
    for grant, event in zip(grants, grant_events, strict=True):
        assert (event.grant_id, event.agent_id) == (grant.grant_id, grant.agent_id)
        assert event.expires_at == grant.expires_at
        assert event.revoked_at == NOW
        assert (event.rule, event.cause_event_id) == (ANOMALY_RULE, "sig-anomaly")
        assert event.quarantined_until == plan.quarantine_until
