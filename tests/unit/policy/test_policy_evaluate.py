"""Pure policy evaluation: escalations scope by scope, and revocation on risk signals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.policy import Policy, RiskContext, load_policy
from schemas.events import AgentProfile, EscalationRequested, RiskObserved, ScopeDenial

FRAUD = Path(__file__).resolve().parents[3] / "policies" / "fraud"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(FRAUD)


def fraud_agent(policy: Policy) -> AgentProfile:
    agent = policy.agent("fraud-detector-7")
    assert agent is not None
    return agent


def request(**changes: Any) -> EscalationRequested:
    fields: dict[str, Any] = {
        "request_id": "req-1", "agent_id": "fraud-detector-7", "scopes": (FREEZE, PII),
        "resources": ("acct-1", "acct-2"), "duration_s": 900, "reason": "card-testing pattern",
        "confidence": 0.95, "risk_score": 0.85, "requested_at": NOW,
    }
    return EscalationRequested(**(fields | changes))


def signal(**changes: Any) -> RiskObserved:
    fields: dict[str, Any] = {
        "signal_id": "sig-1", "subject_agent_id": "fraud-detector-7", "kind": "behaviour_anomaly",
        "severity": 0.95, "source": "ueba", "observed_at": NOW,
    }
    return RiskObserved(**(fields | changes))


def evaluate(policy: Policy, req: EscalationRequested, agent_risk: float = 0.0) -> Any:
    agent = policy.agent(req.agent_id)
    return policy.evaluate(req, agent, RiskContext(agent=agent_risk, request=req.risk_score), NOW)


def test_fraud_request_is_granted_and_clamped_to_the_rule(policy: Policy) -> None:
    """The fraud scenario grants both scopes on the flagged accounts, clamped to 20s by its rule."""
    result = evaluate(policy, request())
    assert result.granted == (FREEZE, PII) and result.denied == ()
    assert result.resources == ("acct-1", "acct-2")
    assert result.duration_s == 20
    assert result.clamped_by == "rule fraud-freeze-on-pattern: max_duration 20s (requested 900s)"
    assert result.matched_rules == ("fraud-freeze-on-pattern",)
    assert result.policy_revision == policy.revision
    assert any("clamped by rule fraud-freeze-on-pattern" in line for line in result.reasons)


def test_short_request_is_not_clamped(policy: Policy) -> None:
    """A duration under every limit is granted as requested, with clamped_by None."""
    result = evaluate(policy, request(duration_s=10))
    assert (result.duration_s, result.clamped_by) == (10, None)


def test_scope_outside_ceiling_is_denied_by_the_ceiling(policy: Policy) -> None:
    """A scope beyond the class ceiling is denied as ceiling:<class>, listing the ceiling."""
    result = evaluate(policy, request(scopes=(FREEZE, "payments:cards.issue")))
    assert result.granted == (FREEZE,)
    (denial,) = result.denied
    assert (denial.scope, denial.rule) == ("payments:cards.issue", "ceiling:fraud-detection")
    assert "payments:accounts.*" in denial.reason and "crm:customer.pii.read" in denial.reason


def test_deny_rule_overrides_allow(policy: Policy) -> None:
    """A firing deny rule beats the escalation rule that would grant the same scope."""
    result = evaluate(policy, request(), agent_risk=0.75)
    assert result.granted == (FREEZE,)
    assert result.denied == (ScopeDenial(scope=PII, rule="no-pii-for-risky-agent",
                                         reason="the agent itself is under elevated risk"),)
    assert result.matched_rules == ("fraud-freeze-on-pattern", "no-pii-for-risky-agent")


def test_uncovered_scope_is_denied_by_default(policy: Policy) -> None:
    """A scope within the ceiling that no rule covers falls to default-deny, saying so."""
    result = evaluate(policy, request(scopes=("payments:accounts.close",)))
    (denial,) = result.denied
    assert denial.rule == "default-deny"
    assert "no escalation rule for class fraud-detection covers" in denial.reason
    assert (result.granted, result.duration_s, result.resources) == ((), 0, ())


def test_baseline_scope_takes_no_special_path(policy: Policy) -> None:
    """A scope already in the baseline is decided like any other (here: default deny)."""
    result = evaluate(policy, request(scopes=("payments:transactions.read",)))
    assert [d.rule for d in result.denied] == ["default-deny"]


def test_low_confidence_is_denied_naming_the_rule_considered(policy: Policy) -> None:
    """Below the agent's confidence threshold the rule's condition is false: default deny."""
    result = evaluate(policy, request(confidence=0.5))
    assert result.granted == () and result.matched_rules == ()
    assert [(d.scope, d.rule) for d in result.denied] == [(FREEZE, "default-deny"),
                                                          (PII, "default-deny")]
    assert "fraud-freeze-on-pattern (condition false" in result.denied[0].reason


def test_unknown_agent_is_denied_every_scope(policy: Policy) -> None:
    """Without a profile every scope is denied as unknown-agent."""
    req = request(agent_id="ghost-1")
    result = policy.evaluate(req, None, RiskContext(), NOW)
    assert [d.rule for d in result.denied] == ["unknown-agent", "unknown-agent"]
    mismatched = policy.evaluate(req, fraud_agent(policy), RiskContext(), NOW)
    assert mismatched.granted == () and mismatched.denied[0].rule == "unknown-agent"


def test_resources_required_and_bounded(policy: Policy) -> None:
    """resources: required needs named resources, and max_resources bounds them."""
    none = evaluate(policy, request(resources=()))
    assert none.granted == () and {d.rule for d in none.denied} == {"fraud-freeze-on-pattern"}
    assert "names none" in none.denied[0].reason
    many = evaluate(policy, request(resources=tuple(f"acct-{i}" for i in range(11))))
    assert many.granted == () and "allows at most 10" in many.denied[0].reason


def test_resources_any_grants_unnarrowed_for_its_own_maximum(policy: Policy) -> None:
    """The report writer's ledger export needs no resources and lapses after 8s."""
    req = request(agent_id="report-writer-2", scopes=("reports:ledger.export",), resources=(),
                  confidence=0.7, risk_score=0.0)
    result = evaluate(policy, req)
    assert result.granted == ("reports:ledger.export",) and result.resources == ()
    assert result.duration_s == 8 and result.clamped_by is not None
    assert result.clamped_by.startswith("rule report-ledger-export: max_duration 8s")


def test_duplicate_scopes_and_resources_are_deduped(policy: Policy) -> None:
    """Repeated scopes and resources are granted once, in request order."""
    result = evaluate(policy, request(scopes=(PII, FREEZE, PII), resources=("a", "b", "a")))
    assert result.granted == (PII, FREEZE) and result.resources == ("a", "b")


def _with_rules(tmp_path: Path, deny_when: str, allow_when: str) -> Policy:
    text = (FRAUD / "policy.yaml").read_text()
    text = text.replace("when: risk.agent >= 0.7", f"when: {deny_when}")
    text = text.replace("when: request.confidence >= agent.confidence_threshold && "
                        "request.risk_score >= 0.8", f"when: {allow_when}")
    (tmp_path / "policy.yaml").write_text(text)
    (tmp_path / "agents.yaml").write_text((FRAUD / "agents.yaml").read_text())
    return load_policy(tmp_path)


def test_runtime_cel_error_fails_closed(tmp_path: Path) -> None:
    """A condition that errors denies for a deny rule and does not grant for an allow rule."""
    policy = _with_rules(tmp_path, deny_when="request.signals.pattern == 'ato'",
                         allow_when="request.signals.pattern == 'card-testing'")
    result = evaluate(policy, request())
    assert result.granted == ()
    by_scope = {d.scope: d for d in result.denied}
    assert by_scope[PII].rule == "no-pii-for-risky-agent"
    assert "failing closed" in by_scope[PII].reason and "KeyError" in by_scope[PII].reason
    assert by_scope[FREEZE].rule == "default-deny"
    assert "condition error: KeyError" in by_scope[FREEZE].reason
    ok = evaluate(policy, request(signals={"pattern": "card-testing"}))
    assert ok.granted == (FREEZE, PII)


def test_time_must_be_aware(policy: Policy) -> None:
    """A naive `now` is a programming error, not a decision."""
    with pytest.raises(ValueError, match="aware"):
        policy.evaluate(request(), fraud_agent(policy), RiskContext(),
                        datetime(2026, 11, 28))  # noqa: DTZ001


def test_behaviour_anomaly_revokes_with_quarantine(policy: Policy) -> None:
    """A 0.95 behaviour anomaly revokes every grant and quarantines the agent for 10m."""
    action = policy.on_risk(signal(), fraud_agent(policy), NOW)
    assert action.revoke and action.rule == "revoke-on-behaviour-anomaly"
    assert action.quarantine_s == 600
    assert "behaviour_anomaly" in action.reason


def test_weak_or_agentless_signals_do_not_revoke(policy: Policy) -> None:
    """Below the severity threshold, or without a subject agent, nothing is revoked."""
    weak = policy.on_risk(signal(severity=0.5), fraud_agent(policy), NOW)
    assert (weak.revoke, weak.rule) == (False, None)
    agentless = policy.on_risk(signal(subject_agent_id=None, resource="acct-1"), None, NOW)
    assert not agentless.revoke and "no subject agent" in agentless.reason


def test_first_matching_revocation_rule_decides(policy: Policy) -> None:
    """Rules are tried in file order; a compromise revokes with its own quarantine."""
    action = policy.on_risk(signal(kind="compromise_suspected"), fraud_agent(policy), NOW)
    assert (action.rule, action.quarantine_s) == ("revoke-on-suspected-compromise", 3600)


def test_max_grant_duration_is_the_longest_rule_limit(policy: Policy) -> None:
    """The longest a grant of the fraud bundle can live, renewals included, is 60s."""
    assert policy.max_grant_duration_s == 60


def test_revocation_condition_error_fails_closed(tmp_path: Path) -> None:
    """A revocation condition that cannot be evaluated revokes (fail closed), saying why."""
    text = (FRAUD / "policy.yaml").read_text().replace(
        'when: signal.kind == "model_changed"', "when: agent.model.version != '3.2'")
    (tmp_path / "policy.yaml").write_text(text)
    policy = load_policy(tmp_path)
    action = policy.on_risk(signal(kind="heartbeat", severity=0.1), None, NOW)
    assert action.revoke and action.rule == "revoke-on-model-change"
    assert "failing closed" in action.reason
