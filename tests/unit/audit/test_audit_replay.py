"""Replay (pure): the decision that took effect, drift, grants as of T, what-if, timeline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.audit.records import policy_loaded_audit
from broker.audit.replay import check, effective, policies_in
from broker.audit.views import grants_as_of, quarantines_as_of, timeline
from broker.audit.whatif import DENIED_TO_GRANTED, GRANTED_TO_DENIED, diff
from broker.grants.decide import AUDIT_UNAVAILABLE, AgentState, decide
from broker.grants.revocation import lifecycle_audit, plan_revocation, revoked_events, risk_audit
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import (
    AuditRecord,
    EscalationRequested,
    GrantIssued,
    RiskObserved,
    ScopeDenial,
)

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]
POLICY = load_policy(ROOT / "policies" / "fraud")
AGENT = "fraud-detector-7"
FREEZE = "payments:accounts.freeze"


def request(n: int, confidence: float = 0.95, **changes: object) -> EscalationRequested:
    return EscalationRequested.model_validate({
        "request_id": f"req-{n}", "agent_id": AGENT, "scopes": (FREEZE,), "resources": ("a-1",),
        "duration_s": 900, "reason": "pattern", "confidence": confidence, "risk_score": 0.9,
        "requested_at": T0, **changes})


def decided(
    req: EscalationRequested, at: datetime, policy: Policy = POLICY,
    state: AgentState | None = None, **kw: object,
) -> tuple[AuditRecord, GrantIssued | None]:
    agent, risk = policy.agent(req.agent_id), RiskContext(request=req.risk_score)
    outcome = decide(req, policy.evaluate(req, agent, risk, at), agent=agent,
                     state=state or AgentState(), received_at=at, now=at, risk=risk,
                     **kw)  # type: ignore[arg-type]
    return outcome.audit, outcome.grant


def revoke(at: datetime, grants: tuple[GrantIssued, ...]) -> list[AuditRecord]:
    """The records of a behaviour anomaly revoking these grants at ``at``."""
    signal = RiskObserved(signal_id="sig-1", subject_agent_id=AGENT, kind="behaviour_anomaly",
                          severity=0.95, source="monitor", observed_at=at)
    action = POLICY.on_risk(signal, POLICY.agent(AGENT), at)
    plan = plan_revocation("sig-1", AGENT, action, now=at, max_grant_s=20, margin_s=60)
    _agent_event, per_grant = revoked_events(plan, grants)
    return [*(lifecycle_audit(e, at) for e in per_grant),
            risk_audit(signal, action, tuple(g.grant_id for g in grants), at)]


def history() -> tuple[list[AuditRecord], GrantIssued]:
    """A granted request, a denied one, then a revocation 10s after the grant."""
    granted, grant = decided(request(1), T0)
    denied, _ = decided(request(2, confidence=0.85), T0 + timedelta(seconds=1))
    assert grant is not None
    loaded = policy_loaded_audit(POLICY, T0 - timedelta(minutes=1), "worker-1")
    return [loaded, granted, denied, *revoke(T0 + timedelta(seconds=10), (grant,))], grant


def test_every_recorded_decision_reproduces_with_the_revision_in_the_log() -> None:
    """The bundle recorded by the worker decides every request again exactly as recorded."""
    records, _ = history()
    policies = policies_in(records)
    assert set(policies) == {POLICY.revision}
    report = check(records, policies)
    assert report.ok and report.decisions == 2 and report.reproduced == 2


def test_a_changed_record_is_reported_as_drift_naming_it() -> None:
    """A recorded decision that its inputs no longer produce is drift, with its record."""
    records, _ = history()
    changed = records[1].model_copy(update={"inputs": {
        **records[1].inputs, "request": {**records[1].inputs["request"],  # type: ignore[dict-item]
                                         "confidence": 0.5}}})
    report = check([records[0], changed, *records[2:]], policies_in(records))
    assert len(report.drift) == 1 and report.drift[0].request_id == "req-1"
    assert report.drift[0].ref.audit_id == records[1].audit_id
    assert set(report.drift[0].fields) >= {"outcome", "granted_scopes"}


def test_a_revision_the_log_does_not_hold_is_counted_not_guessed() -> None:
    """Without the bundle of a revision, its decisions are reported missing, not replayed."""
    records, _ = history()
    report = check(records[1:], {})
    assert report.missing_revisions == {POLICY.revision: 2} and not report.ok


def test_the_last_decision_of_a_request_is_the_one_that_took_effect() -> None:
    """An attempt superseded before its commit (a fail-closed retry) is not the effective one."""
    first, _ = decided(request(1), T0)
    denial = ScopeDenial(scope="*", rule=AUDIT_UNAVAILABLE, reason="audit down")
    final, _ = decided(request(1), T0 + timedelta(seconds=1), blocked_by=denial)
    assert first.audit_id != final.audit_id
    chosen = effective([first, final])[(AGENT, "req-1")]
    assert chosen.record == final and chosen.blocked
    assert check([first, final], {POLICY.revision: POLICY}).reproduced == 2


def test_a_stale_owners_late_attempt_never_wins() -> None:
    """An attempt by a worker fenced before its commit, logged after the new owner's, loses."""
    owner, _ = decided(request(1), T0, note={"fence_epoch": 6})
    stale, _ = decided(request(1, confidence=0.5), T0, note={"fence_epoch": 5, "attempt": 1})
    assert owner.outcome == "granted" and stale.outcome == "denied"
    assert effective([owner, stale])[(AGENT, "req-1")].record == owner


def test_grants_as_of_three_instants() -> None:
    """Before the grant: none; while active: it, until its revocation; after: none."""
    records, grant = history()
    assert grants_as_of(records, T0 - timedelta(seconds=1)) == []
    [active] = grants_as_of(records, T0 + timedelta(seconds=5))
    assert active.grant_id == grant.grant_id and active.expires_at == grant.expires_at
    assert active.ends_at == T0 + timedelta(seconds=10)
    assert active.ended_by == "revoke-on-behaviour-anomaly"
    assert grants_as_of(records, T0 + timedelta(seconds=11)) == []
    [barred] = quarantines_as_of(records, T0 + timedelta(seconds=11))
    assert barred.until == T0 + timedelta(seconds=10 + 600)


def test_an_unrevoked_grant_ends_at_its_expiry() -> None:
    """Without a revocation a grant is active until expires_at, exclusive."""
    record, grant = decided(request(1), T0)
    assert grant is not None
    assert [g.grant_id for g in grants_as_of([record], grant.expires_at
                                              - timedelta(milliseconds=1))] == [grant.grant_id]
    assert grants_as_of([record], grant.expires_at) == []


def test_what_if_lowering_the_threshold_flips_exactly_the_affected_requests(
    tmp_path: Path,
) -> None:
    """A candidate with threshold 0.8 grants the 0.8-0.9 requests; nothing else changes."""
    confidences = [0.75, 0.82, 0.88, 0.95]
    records = [decided(request(n, confidence=c), T0)[0] for n, c in enumerate(confidences)]
    for name in ("policy.yaml", "agents.yaml"):
        text = (ROOT / "policies" / "fraud" / name).read_text()
        (tmp_path / name).write_text(text.replace("confidence_threshold: 0.9",
                                                  "confidence_threshold: 0.8"))
    report = diff(records, load_policy(tmp_path))
    assert report.compared == 4 and report.unchanged == 2 and report.profiles == "candidate"
    assert {c.request_id: c.category for c in report.changes} == {
        "req-1": DENIED_TO_GRANTED, "req-2": DENIED_TO_GRANTED}
    stricter = diff(records, POLICY.__class__(
        name="strict", revision="sha256:0", source="test", default_max_duration_s=900,
        classes=POLICY.classes, escalation_rules=(), deny_rules=(), revocation_rules=(),
        agents=POLICY.agents()))
    assert [c.category for c in stricter.changes] == [GRANTED_TO_DENIED]


def test_timeline_tells_one_agents_story_in_order() -> None:
    """Every record about the agent, in time order, with what was granted and revoked."""
    records, grant = history()
    story = timeline(list(reversed(records)), AGENT)
    assert [m.kind for m in story[:2]] == ["escalation.decided", "escalation.decided"]
    assert {m.kind for m in story[2:]} == {"grant.revoked", "risk.observed"}  # same instant
    assert "GRANTED" in story[0].text and grant.grant_id in story[0].text
    assert "DENIED" in story[1].text
    assert any("revoked 1 grant(s)" in m.text for m in story[2:])
