"""``decide``'s own answers: held for approval (one evaluation) and the verified signer as input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.grants.decide import (
    AgentState,
    HeldForApproval,
    Outcome,
    Signer,
    decide,
    hold,
)
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import EscalationRequested, ScopeDenial

POLICIES = Path(__file__).resolve().parents[3] / "policies"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
AGENT = "fraud-detector-7"


@pytest.fixture(scope="module")
def graduated() -> Policy:
    return load_policy(POLICIES / "graduated")


@pytest.fixture(scope="module")
def fraud() -> Policy:
    return load_policy(POLICIES / "fraud")


def request(confidence: float = 0.85, risk: float = 0.9) -> EscalationRequested:
    return EscalationRequested(
        request_id="req-1", agent_id=AGENT, scopes=(FREEZE, PII), resources=("acct-1",),
        duration_s=900, reason="pattern", confidence=confidence, risk_score=risk,
        requested_at=T0)


def test_a_request_needing_approval_is_held_with_the_pre_pass_s_exact_record(
    graduated: Policy,
) -> None:
    """With ``holds``, a request the policy grants only on approval is held: the pending event
    and audit record are those ``hold`` builds from the request, profile, risk and times."""
    req, agent, risk = request(), graduated.agent(AGENT), RiskContext(0.1, 0.9)
    evaluation = graduated.evaluate(req, agent, risk, T0)
    assert evaluation.approval is not None
    held = decide(req, evaluation, agent=agent, state=AgentState(), received_at=T0, now=T0,
                  risk=risk, note={"attempt": 0}, holds=True)
    assert isinstance(held, HeldForApproval)
    inputs: dict[str, object] = {
        "request": req.model_dump(mode="json"),
        "agent": agent.model_dump(mode="json") if agent else None,
        "risk": {"agent": 0.1, "request": 0.9},
        "received_at": T0.isoformat(), "now": T0.isoformat()}
    pending, audit = hold(req, evaluation, received_at=T0, now=T0, inputs=inputs)
    assert held.pending == pending and held.audit == audit
    assert list(held.audit.inputs) == [*inputs, "pending"]


def test_without_holds_the_same_request_is_decided(graduated: Policy) -> None:
    """Callers that cannot hold (replay, policy tests) get a decision: the held scope denied."""
    req, agent = request(), graduated.agent(AGENT)
    evaluation = graduated.evaluate(req, agent, RiskContext(), T0)
    outcome = decide(req, evaluation, agent=agent, state=AgentState(), received_at=T0, now=T0)
    assert isinstance(outcome, Outcome)
    assert FREEZE in {d.scope for d in outcome.decision.denied}


@pytest.mark.parametrize("why", ["blocked", "quarantined", "revoked"])
def test_a_denied_request_is_never_held(graduated: Policy, why: str) -> None:
    """An outside denial or the agent's state decides the request (denied) instead of holding."""
    req, agent = request(), graduated.agent(AGENT)
    evaluation = graduated.evaluate(req, agent, RiskContext(), T0)
    state = {"quarantined": AgentState(quarantined_until=T0 + timedelta(minutes=1)),
             "revoked": AgentState(revoked_at=T0)}.get(why, AgentState())
    blocked = ScopeDenial(scope="*", rule="rate", reason="over") if why == "blocked" else None
    outcome = decide(req, evaluation, agent=agent, state=state, received_at=T0, now=T0,
                     blocked_by=blocked, holds=True)
    assert isinstance(outcome, Outcome) and outcome.decision.outcome == "denied"


def test_the_signer_is_recorded_on_the_grant_and_last_in_the_audit(fraud: Policy) -> None:
    """A verified signer puts its key and the model's digest on the grant, and ``signed_by``
    after every other input of the audit record; the decision itself does not change."""
    req, agent = request(confidence=0.95, risk=0.85), fraud.agent(AGENT)
    assert agent is not None
    evaluation = fraud.evaluate(req, agent, RiskContext(request=0.85), T0)
    plain = decide(req, evaluation, agent=agent, state=AgentState(), received_at=T0, now=T0)
    signed = decide(req, evaluation, agent=agent, state=AgentState(), received_at=T0, now=T0,
                    signer=Signer(AGENT, "kid-1"))
    assert plain.grant is not None and signed.grant is not None
    assert signed.grant == plain.grant.model_copy(
        update={"kid": "kid-1", "model_digest": agent.model.digest})
    assert signed.decision == plain.decision
    assert list(signed.audit.inputs) == [*plain.audit.inputs, "signed_by"]
    assert signed.audit.inputs["signed_by"] == {"principal": AGENT, "kid": "kid-1"}
    assert signed.audit.audit_id == plain.audit.audit_id


def test_an_unsigned_dev_mode_signer_records_no_key(fraud: Policy) -> None:
    """A signer without a key (unsigned dev mode) is recorded with ``kid`` null; a denial
    records its signer too."""
    req, agent = request(), fraud.agent(AGENT)
    evaluation = fraud.evaluate(req, agent, RiskContext(), T0)
    denial = ScopeDenial(scope="*", rule="identity:suspended", reason="suspended")
    outcome = decide(req, evaluation, agent=agent, state=AgentState(), received_at=T0, now=T0,
                     blocked_by=denial, signer=Signer(AGENT))
    assert outcome.grant is None and outcome.decision.outcome == "denied"
    assert outcome.audit.inputs["signed_by"] == {"principal": AGENT, "kid": None}
