"""Delegated grants in the past and in a rebuild: a child counts only while its parent chain
lives ("what could the agent do at T", and the grants a rebuild restores)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.rebuild import fold
from broker.audit.views import grants_as_of
from broker.grants.decide import AgentState, decide
from broker.grants.delegation import Parties, decide_delegation
from broker.grants.revocation import lifecycle_audit
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import (
    AuditRecord,
    DelegationRequested,
    EscalationRequested,
    GrantIssued,
    GrantRevoked,
)
from tests.support.policy_files import BASE, write

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE = "payments:accounts.freeze"
A, B, C = "fraud-detector-7", "fraud-detector-8", "fraud-detector-9"
RULES = BASE.replace("deny_rules:\n", """delegation_rules:
  - id: hand-over-freeze
    from_classes: [fraud-detection]
    to_classes: [fraud-detection]
    scopes: ["payments:accounts.*"]
deny_rules:
""", 1)


def _policy(tmp_path: Path) -> Policy:
    return load_policy(write(tmp_path, RULES))


def _granted(policy: Policy) -> tuple[AuditRecord, GrantIssued]:
    """A's own grant of FREEZE on acct-1, decided at T0."""
    req = EscalationRequested.model_validate({
        "request_id": "req-1", "agent_id": A, "scopes": (FREEZE,), "resources": ("acct-1",),
        "duration_s": 600, "reason": "pattern", "confidence": 0.95, "risk_score": 0.9,
        "requested_at": T0})
    agent, risk = policy.agent(A), RiskContext(request=req.risk_score)
    out = decide(req, policy.evaluate(req, agent, risk, T0), agent=agent, state=AgentState(),
                 received_at=T0, now=T0, risk=risk)
    assert out.grant is not None, out.decision.reasons
    return out.audit, out.grant


def _delegated(policy: Policy, parent: GrantIssued, to: str, at: datetime,
               n: int) -> tuple[AuditRecord, GrantIssued]:
    """``parent``'s holder hands FREEZE to ``to`` at ``at``."""
    seed = policy.agent(A)
    assert seed is not None
    req = DelegationRequested.model_validate({
        "request_id": f"del-{n}", "agent_id": parent.agent_id, "parent_grant_id": parent.grant_id,
        "delegate_id": to, "scopes": [FREEZE], "duration_s": 300, "reason": "hand over",
        "requested_at": at})
    parties = Parties(
        parent=parent, delegator=seed.model_copy(update={"agent_id": parent.agent_id}),
        delegator_state=AgentState(), delegate=seed.model_copy(update={"agent_id": to}),
        delegate_state=AgentState())
    out = decide_delegation(req, parties, policy, at)
    assert out.grant is not None, out.decision.reasons
    return out.audit, out.grant


def _revoked(grant: GrantIssued, at: datetime) -> GrantRevoked:
    return GrantRevoked(grant_id=grant.grant_id, agent_id=grant.agent_id, revoked_at=at,
                        expires_at=grant.expires_at, reason="compromised", rule="operator",
                        cause_event_id="cmd-1")


def test_a_delegated_grant_is_active_only_while_its_whole_chain_was(tmp_path: Path) -> None:
    """Child and grandchild show at T with their parents; once the root is revoked neither
    does, even before (or without) the records of their own revocation."""
    policy = _policy(tmp_path)
    root_rec, root = _granted(policy)
    child_rec, child = _delegated(policy, root, B, T0 + timedelta(seconds=1), 1)
    grand_rec, grand = _delegated(policy, child, C, T0 + timedelta(seconds=2), 2)
    records = [root_rec, child_rec, grand_rec]
    early = grants_as_of(records, T0 + timedelta(seconds=1, milliseconds=500))
    assert {g.grant_id for g in early} == {root.grant_id, child.grant_id}
    at_5 = {g.grant_id: g for g in grants_as_of(records, T0 + timedelta(seconds=5))}
    assert set(at_5) == {root.grant_id, child.grant_id, grand.grant_id}
    assert at_5[grand.grant_id].agent_id == C
    assert at_5[grand.grant_id].parent_grant_id == child.grant_id
    assert at_5[child.grant_id].parent_grant_id == root.grant_id
    records.append(lifecycle_audit(_revoked(root, T0 + timedelta(seconds=10)),
                                   T0 + timedelta(seconds=10)))
    assert {g.grant_id for g in grants_as_of(records, T0 + timedelta(seconds=9))} == set(at_5)
    assert grants_as_of(records, T0 + timedelta(seconds=10)) == []
    assert grants_as_of(records, T0 + timedelta(seconds=200)) == []


def test_a_child_whose_parent_was_never_granted_is_never_active(tmp_path: Path) -> None:
    """A delegation record whose parent grant the audit does not hold counts for nothing."""
    policy = _policy(tmp_path)
    _root_rec, root = _granted(policy)
    child_rec, _child = _delegated(policy, root, B, T0 + timedelta(seconds=1), 1)
    assert grants_as_of([child_rec], T0 + timedelta(seconds=5)) == []


def _record(event: object) -> Record:
    return Record(topic="t", partition=0, offset=0, timestamp_ms=0, event=event,  # type: ignore[arg-type]
                  error=None, raw=None)


def test_a_rebuild_restores_a_child_only_with_its_parent(tmp_path: Path) -> None:
    """Folding the grant topic keeps a live parent's child, and drops a child whose parent
    ended even when the child's own revocation never reached the log."""
    policy = _policy(tmp_path)
    _rec, root = _granted(policy)
    _rec, child = _delegated(policy, root, B, T0 + timedelta(seconds=1), 1)
    _rec, grand = _delegated(policy, child, C, T0 + timedelta(seconds=2), 2)
    log = [_record(root), _record(child), _record(grand)]
    now = T0 + timedelta(seconds=5)
    assert set(fold(log, now).active) == {root.grant_id, child.grant_id, grand.grant_id}
    ended = fold([*log, _record(_revoked(child, now))], now)
    assert set(ended.active) == {root.grant_id}
