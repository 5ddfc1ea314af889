"""Renewal and release decisions (pure): policy re-evaluation and the cumulative maximum."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.errors import PolicyError
from broker.grants.decide import AgentState
from broker.grants.renewal import NO_EXTENSION, NOT_ACTIVE, decide_release, decide_renewal
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import GrantIssued, ReleaseRequested, RenewalRequested

FRAUD = Path(__file__).resolve().parents[3] / "policies" / "fraud"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII, EXPORT = "payments:accounts.freeze", "crm:customer.pii.read", "reports:ledger.export"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(FRAUD)


def grant(agent: str = "fraud-detector-7", scopes: tuple[str, ...] = (FREEZE, PII),
          life_s: int = 20, resources: tuple[str, ...] = ("acct-1",)) -> GrantIssued:
    return GrantIssued(grant_id="grant-1", agent_id=agent, request_id="req-1", scopes=scopes,
                       resources=resources, issued_at=T0, expires_at=T0 + timedelta(seconds=life_s),
                       policy_revision="p", rules=("fraud-freeze-on-pattern",))


def renewal(**changes: Any) -> RenewalRequested:
    fields: dict[str, Any] = {
        "request_id": "renew-1", "agent_id": "fraud-detector-7", "grant_id": "grant-1",
        "duration_s": 20, "reason": "still investigating", "confidence": 0.95,
        "risk_score": 0.9, "requested_at": T0,
    }
    return RenewalRequested(**(fields | changes))


def decide(policy: Policy, r: RenewalRequested, g: GrantIssued | None, at_s: float,
           state: AgentState | None = None, risk: float = 0.0) -> Any:
    at = T0 + timedelta(seconds=at_s)
    return decide_renewal(r, g, policy, agent=policy.agent(r.agent_id),
                          risk=RiskContext(agent=risk, request=r.risk_score),
                          state=state or AgentState(), received_at=at, now=at)


def test_renewal_within_the_cumulative_maximum_states_the_new_absolute_expiry(
    policy: Policy,
) -> None:
    """At t=15s a 20s renewal moves the expiry to t=35s (within the rule's 60s total)."""
    out = decide(policy, renewal(), grant(), 15)
    assert out.decision.outcome == "renewed"
    assert out.decision.expires_at == T0 + timedelta(seconds=35)
    assert out.decision.previous_expires_at == T0 + timedelta(seconds=20)
    assert out.decision.total_duration_s == 35 and out.decision.max_total_duration_s == 60
    assert out.renewed is not None and out.renewed.expires_at == out.decision.expires_at
    assert out.renewed.scopes == (FREEZE, PII) and out.renewed.resources == ("acct-1",)


def test_renewal_beyond_the_cumulative_maximum_is_refused_naming_the_rule(policy: Policy) -> None:
    """At t=45s a 20s renewal would reach 65s > 60s: refused by fraud-freeze-on-pattern."""
    out = decide(policy, renewal(), grant(life_s=50), 45)
    assert out.decision.outcome == "denied" and out.renewed is None
    assert out.decision.rule == "fraud-freeze-on-pattern"
    assert "rule fraud-freeze-on-pattern: max_total_duration 1m" in out.decision.reasons[0]
    assert "15s from the renewal request" in out.decision.reasons[0]
    assert out.decision.expires_at == T0 + timedelta(seconds=50)  # unchanged, stated


def test_a_rule_without_max_total_duration_allows_no_renewal_past_its_max_duration(
    policy: Policy,
) -> None:
    """report-ledger-export (8s, no total) cannot be renewed past 8s in all."""
    g = grant("report-writer-2", (EXPORT,), 8, ())
    r = renewal(agent_id="report-writer-2", duration_s=8, risk_score=0.0)
    out = decide(policy, r, g, 1)
    assert out.decision.outcome == "denied" and out.decision.rule == "report-ledger-export"
    assert "max_duration 8s" in out.decision.reasons[0]


def test_renewal_is_re_evaluated_by_policy_with_the_fresh_evidence(policy: Policy) -> None:
    """Confidence below the threshold now: the escalation rule no longer holds, renewal denied."""
    out = decide(policy, renewal(confidence=0.5), grant(), 5)
    assert out.decision.outcome == "denied" and out.decision.rule == "default-deny"
    risky = decide(policy, renewal(), grant(), 5, risk=0.9)  # deny rule on crm for risky agents
    assert risky.decision.outcome == "denied" and risky.decision.rule == "no-pii-for-risky-agent"


def test_an_agent_cannot_renew_another_agents_or_an_ended_grant(policy: Policy) -> None:
    """Someone else's grant (or none) is 'not an active grant of' the requester."""
    theirs = decide(policy, renewal(agent_id="report-writer-2"), grant(), 5)
    assert theirs.decision.outcome == "denied" and theirs.decision.rule == NOT_ACTIVE
    gone = decide(policy, renewal(), None, 5)
    assert gone.decision.rule == NOT_ACTIVE and gone.decision.expires_at is None


def test_renewal_that_would_not_extend_and_quarantine_are_refused(policy: Policy) -> None:
    """A renewal ending before the current expiry is refused; so is a quarantined agent's."""
    short = decide(policy, renewal(duration_s=2), grant(), 1)
    assert short.decision.rule == NO_EXTENSION
    state = AgentState(quarantined_until=T0 + timedelta(minutes=10), quarantine_rule="q-rule")
    quarantined = decide(policy, renewal(), grant(), 5, state=state)
    assert quarantined.decision.outcome == "denied" and quarantined.decision.rule == "q-rule"


def test_redelivered_renewal_decides_the_same_expiry(policy: Policy) -> None:
    """The expiry derives from the renewal's append time: deciding it again gives the same."""
    first, again = decide(policy, renewal(), grant(), 15), decide(policy, renewal(), grant(), 15)
    assert first.decision == again.decision and first.renewed == again.renewed


def test_release_only_of_ones_own_live_grant() -> None:
    """Releasing one's own grant emits grant.released; anyone else's is denied."""
    req = ReleaseRequested(request_id="rel-1", agent_id="fraud-detector-7", grant_id="grant-1",
                           reason="done", requested_at=T0)
    decision, event, audit = decide_release(req, grant(), T0)
    assert decision.outcome == "released" and event is not None and event.reason == "done"
    other = req.model_copy(update={"agent_id": "report-writer-2"})
    decision2, event2, _ = decide_release(other, grant(), T0)
    assert decision2.outcome == "denied" and event2 is None
    assert audit.kind == "grant.release"


def test_loader_refuses_a_total_shorter_than_max_duration(tmp_path: Path) -> None:
    """max_total_duration below the rule's max_duration is a policy error naming the rule."""
    text = (FRAUD / "policy.yaml").read_text().replace("max_total_duration: 60s",
                                                        "max_total_duration: 10s")
    (tmp_path / "policy.yaml").write_text(text)
    with pytest.raises(PolicyError, match="shorter than the rule's max_duration") as info:
        load_policy(tmp_path)
    assert info.value.rule == "fraud-freeze-on-pattern"
