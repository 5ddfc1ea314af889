"""Approvals core (pure): hold, vote checks, and the final decision at the deciding vote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.grants.approvals import (
    APPROVAL_RECHECK,
    NOT_AN_APPROVER,
    SELF_APPROVAL,
    WINDOW_CLOSED,
    Resolution,
    resolve,
    vote_problem,
)
from broker.grants.decide import AgentState, Pending, hold
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import ApprovalVoted, EscalationRequested

BUNDLE = Path(__file__).resolve().parents[3] / "policies" / "graduated"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
AGENT = "fraud-detector-7"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(BUNDLE)


def held(policy: Policy) -> Pending:
    request = EscalationRequested(
        request_id="req-1", agent_id=AGENT, scopes=(FREEZE, PII), resources=("acct-1",),
        duration_s=900, reason="pattern", confidence=0.85, risk_score=0.9, requested_at=T0)
    evaluation = policy.evaluate(request, policy.agent(AGENT), RiskContext(), T0)
    pending, audit = hold(request, evaluation, received_at=T0, now=T0, inputs={})
    assert audit.kind == "escalation.pending" and audit.outcome == "pending"
    return pending


def vote(approver: str, verdict: str = "approve") -> ApprovalVoted:
    return ApprovalVoted(vote_id=f"v-{approver}", request_id="req-1", agent_id=AGENT,
                         approver=approver, verdict=verdict,  # type: ignore[arg-type]
                         voted_at=T0)


def test_hold_sets_the_window_from_the_request_append_time(policy: Policy) -> None:
    """The window ends at the request's append time + 10m; the grant would last 5m (tier)."""
    pending = held(policy)
    assert pending.event.window_expires_at == T0 + timedelta(minutes=10)
    assert pending.event.duration_s == 300 and pending.event.quorum == 2
    assert Pending.from_json(pending.to_json()) == pending


def test_vote_checks(policy: Policy) -> None:
    """Self-approval, a stranger and a late vote are refused; a listed approver in time counts."""
    pending = held(policy)
    in_time = T0 + timedelta(minutes=1)
    assert vote_problem(vote("verifier-1"), pending, in_time) is None
    self_vote = vote_problem(vote(AGENT), pending, in_time)
    assert self_vote is not None and self_vote.rule == SELF_APPROVAL
    stranger = vote_problem(vote("operator:mallory"), pending, in_time)
    assert stranger is not None and stranger.rule == NOT_AN_APPROVER
    late = vote_problem(vote("verifier-1"), pending, T0 + timedelta(minutes=10))
    assert late is not None and late.rule == WINDOW_CLOSED


def test_approved_grant_counts_from_the_deciding_vote(policy: Policy) -> None:
    """expires_at = decided_at + the clamped 300s, not the request time + 300s."""
    approved_at = T0 + timedelta(minutes=7)
    out = resolve(held(policy), Resolution("approved", approved_at, ("verifier-1", "verifier-2")),
                  policy=policy, agent=policy.agent(AGENT), state=AgentState(),
                  risk=RiskContext())
    assert out.grant is not None and out.decision.outcome == "granted"
    assert out.grant.expires_at == approved_at + timedelta(seconds=300)
    assert out.decision.approvals == ("verifier-1", "verifier-2")
    assert out.decision.tiers == ("fraud-graduated/unsure",)
    assert out.audit.kind == "approval.decided"


def test_a_revocation_after_the_request_is_never_undone(policy: Policy) -> None:
    """Revoked between request and approval: the approval grants nothing."""
    state = AgentState(revoked_at=T0 + timedelta(minutes=1))
    out = resolve(held(policy), Resolution("approved", T0 + timedelta(minutes=2), ("a", "b")),
                  policy=policy, agent=policy.agent(AGENT), state=state, risk=RiskContext())
    assert out.grant is None and {d.rule for d in out.decision.denied} == {"revocation"}


def test_policy_is_evaluated_again_at_approval(policy: Policy) -> None:
    """An agent whose profile no longer qualifies (another class) gets approval-recheck."""
    agent = policy.agent("verifier-1")
    assert agent is not None
    moved = agent.model_copy(update={"agent_id": AGENT})
    out = resolve(held(policy), Resolution("approved", T0 + timedelta(minutes=2), ("a", "b")),
                  policy=policy, agent=moved, state=AgentState(), risk=RiskContext())
    assert out.grant is None and {d.rule for d in out.decision.denied} == {APPROVAL_RECHECK}


@pytest.mark.parametrize(("status", "rule"), [("denied", "approval-denied"),
                                              ("expired", "approval-expired")])
def test_denied_and_expired_say_so(policy: Policy, status: str, rule: str) -> None:
    """A deny or an unanswered window: denied, naming approval-denied / approval-expired."""
    out = resolve(held(policy), Resolution(status, T0 + timedelta(minutes=10),  # type: ignore[arg-type]
                                           (), denier="verifier-2" if status == "denied" else ""),
                  policy=policy, agent=policy.agent(AGENT), state=AgentState(),
                  risk=RiskContext())
    assert out.grant is None and out.decision.outcome == "denied"
    assert {d.rule for d in out.decision.denied} == {rule} and rule in out.decision.matched_rules
