"""Delegations held for approval, pure parts: the rule's ``approval:``, the hold, who may
vote, and the denial when an approver denies or the window closes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.audit.redact import Redactor
from broker.errors import PolicyError
from broker.grants.approvals import SELF_APPROVAL, vote_problem
from broker.grants.decide import AgentState
from broker.grants.delegation import Parties, decide_delegation
from broker.grants.delegation_hold import (
    HeldDelegation,
    approval_needed,
    approved,
    hold_delegation,
    refused,
)
from broker.policy import Policy, load_policy
from schemas.events import ApprovalVoted, DelegationRequested, GrantIssued
from tests.support.policy_files import BASE, write

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FREEZE = "payments:accounts.freeze"
A, B = "fraud-detector-7", "fraud-detector-8"
RULES = BASE.replace("deny_rules:\n", """delegation_rules:
  - id: hand-over-with-sign-off
    from_classes: [fraud-detection]
    to_classes: [fraud-detection]
    scopes: ["payments:accounts.*"]
    approval: {quorum: 2, approvers: [operator:alice, verifier-1, fraud-detector-8], window: 5m}
deny_rules:
""", 1)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write(tmp_path, RULES))


def _held(policy: Policy) -> HeldDelegation:
    seed = policy.agent(A)
    assert seed is not None
    parent = GrantIssued(grant_id="grant-p", agent_id=A, request_id="req-p", scopes=(FREEZE,),
                         resources=("acct-1",), issued_at=NOW,
                         expires_at=NOW + timedelta(minutes=10), policy_revision="r",
                         rules=("fraud-freeze",))
    request = DelegationRequested.model_validate({
        "request_id": "del-1", "agent_id": A, "parent_grant_id": "grant-p", "delegate_id": B,
        "scopes": [FREEZE], "duration_s": 60, "reason": "hand over", "requested_at": NOW})
    parties = Parties(parent=parent, delegator=seed, delegator_state=AgentState(),
                      delegate=seed.model_copy(update={"agent_id": B}),
                      delegate_state=AgentState())
    outcome = decide_delegation(request, parties, policy, NOW)
    need = approval_needed(policy, outcome.decision)
    assert need is not None and outcome.grant is not None
    held, audit = hold_delegation(outcome, request, need, NOW, NOW)
    assert audit.kind == "grant.delegation.held" and audit.outcome == "pending"
    assert "acct-1" not in Redactor(b"k" * 32).redact(audit).model_dump_json()  # hashed
    approval = approved(outcome, ("operator:alice", "verifier-1"), held, NOW)
    assert approval.grant == outcome.grant and "approved by operator:alice" in \
        approval.decision.reasons[-1]
    return held


def test_a_rule_with_approval_holds_what_it_would_grant(policy: Policy) -> None:
    """The pending notice names the delegator, the child's scopes, quorum, approvers, window."""
    held = _held(policy)
    event = held.event
    assert (event.agent_id, event.scopes, event.resources) == (A, (FREEZE,), ("acct-1",))
    assert event.quorum == 2 and "verifier-1" in event.approvers
    assert event.window_expires_at == NOW + timedelta(minutes=5)
    assert "hand-over-with-sign-off" in event.matched_rules
    assert HeldDelegation.from_json(json.loads(held.to_json())) == held


def test_neither_the_delegator_nor_the_delegate_may_approve(policy: Policy) -> None:
    """Self-approval refused for both parties; a listed verifier's vote counts."""
    held = _held(policy)

    def vote(approver: str) -> ApprovalVoted:
        return ApprovalVoted(vote_id=f"v-{approver}", request_id="del-1", agent_id=A,
                             approver=approver, verdict="approve", voted_at=NOW)
    for party in (A, B):
        problem = vote_problem(vote(party), held, NOW + timedelta(seconds=1))
        assert problem is not None and problem.rule == SELF_APPROVAL
    assert vote_problem(vote("verifier-1"), held, NOW + timedelta(seconds=1)) is None


def test_a_deny_or_a_closed_window_denies_naming_the_rule(policy: Policy) -> None:
    """approval-denied names the denier; approval-expired names the window's end."""
    held = _held(policy)
    decision, audit = refused(held, "denied", "verifier-1", NOW)
    assert decision.outcome == "denied" and decision.grant_id is None
    assert {d.rule for d in decision.denied} == {"approval-denied"}
    assert "verifier-1" in decision.reasons[0] and audit.kind == "grant.delegation.decided"
    expired, _ = refused(held, "expired", "", NOW + timedelta(minutes=6))
    assert {d.rule for d in expired.denied} == {"approval-expired"}


def test_a_quorum_above_the_approvers_is_refused(tmp_path: Path) -> None:
    """The approval of a delegation rule is checked like an escalation rule's."""
    with pytest.raises(PolicyError, match="quorum 4"):
        load_policy(write(tmp_path, RULES.replace("quorum: 2", "quorum: 4")))
