"""Delegations held for approval (pure): the hold, and the answer when the window closes.

Imports broker.grants, broker.policy, schemas and stdlib; time is an argument.

A delegation rule with ``approval:`` (quorum, approvers, window, as escalation rules have)
grants nothing at once: ``broker.grants.delegation`` decides what the child would be, and the
request is held (an ``EscalationPending`` naming the delegator, so the approvals machinery
counts votes on it like any held request). Neither the delegator nor the delegate can
approve. On quorum the delegation is decided again at the deciding moment, under the same
checks (parent still live, child within it, expiry within the parent's); a deny or an
unanswered window denies it, naming ``approval-denied`` or ``approval-expired``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.grants.decide import derive_id
from broker.grants.delegation import DECIDED_KIND, DelegationOutcome
from broker.policy.evaluate import Policy
from broker.policy.model import APPROVAL_DENIED, APPROVAL_EXPIRED, ApprovalSpec
from schemas.events import (
    AuditRecord,
    DelegationDecided,
    DelegationRequested,
    EscalationPending,
    ScopeDenial,
)

HELD_KIND = "grant.delegation.held"  # the audit record of a delegation held for approval


@dataclass(frozen=True)
class HeldDelegation:
    """A delegation waiting for approvers: the pending notice and the request it holds."""

    event: EscalationPending
    request: DelegationRequested
    received_at: datetime  # Kafka append time of the request

    def to_json(self) -> str:
        """What the approval store keeps (``delegation`` tells it from a held escalation)."""
        return json.dumps({"event": self.event.model_dump(mode="json"),
                           "delegation": self.request.model_dump(mode="json"),
                           "received_at": self.received_at.isoformat()})

    @classmethod
    def from_json(cls, data: dict[str, object]) -> HeldDelegation:
        """Inverse of ``to_json`` (already parsed)."""
        return cls(EscalationPending.model_validate(data["event"]),
                   DelegationRequested.model_validate(data["delegation"]),
                   datetime.fromisoformat(str(data["received_at"])))


def approval_needed(policy: Policy, decision: DelegationDecided) -> ApprovalSpec | None:
    """The approval a granted delegation needs: the strictest of its matched rules' (the
    highest quorum, every approver they list, the shortest window); None when none asks."""
    specs = [r.approval for r in policy.delegation_rules
             if r.id in decision.matched_rules and r.approval is not None]
    if not specs:
        return None
    approvers = tuple(dict.fromkeys(a for s in specs for a in s.approvers))
    return ApprovalSpec(quorum=max(s.quorum for s in specs), approvers=approvers,
                        window_s=min(s.window_s for s in specs))


def hold_delegation(outcome: DelegationOutcome, request: DelegationRequested,
                    need: ApprovalSpec, received_at: datetime,
                    now: datetime) -> tuple[HeldDelegation, AuditRecord]:
    """Hold a delegation the policy grants only on approval: nothing is granted yet."""
    decision, grant = outcome.decision, outcome.grant
    assert grant is not None, "only a delegation that would be granted is held"
    wanted = f"delegate {', '.join(grant.scopes)} of grant {decision.parent_grant_id} to " \
             f"{decision.delegate_id}"
    event = EscalationPending(
        decision_id=derive_id("pending-delegation", request.request_id, request.agent_id),
        request_id=request.request_id, agent_id=request.agent_id, scopes=grant.scopes,
        resources=grant.resources,
        duration_s=max(int((grant.expires_at - grant.issued_at).total_seconds()), 1),
        quorum=need.quorum, approvers=need.approvers,
        window_expires_at=received_at + timedelta(seconds=need.window_s),
        matched_rules=decision.matched_rules,
        reasons=(*decision.reasons, f"{wanted}: needs {need.quorum} of "
                 f"{len(need.approvers)} approvals ({', '.join(need.approvers)})"),
        policy_revision=decision.policy_revision, decided_at=now)
    audit = AuditRecord(
        audit_id=derive_id("audit-delegation-held", request.request_id, request.agent_id),
        kind=HELD_KIND, agent_id=request.agent_id, occurred_at=now,
        subject_id=request.request_id, outcome="pending", reasons=event.reasons,
        rules=event.matched_rules, policy_revision=event.policy_revision,
        inputs={"request": request.model_dump(mode="json"),
                "pending": event.model_dump(mode="json"),
                "decision": decision.model_dump(mode="json")})  # redacted like any decision
    return HeldDelegation(event, request, received_at), audit


def approved(outcome: DelegationOutcome, approvers: tuple[str, ...], held: HeldDelegation,
             at: datetime) -> DelegationOutcome:
    """The decision made at the deciding approval, saying who approved it."""
    event = held.event
    why = (f"approved by {', '.join(approvers)} ({len(approvers)} of {len(event.approvers)}, "
           f"quorum {event.quorum}) at {at.isoformat()}")
    decision = outcome.decision.model_copy(update={"reasons": (*outcome.decision.reasons, why)})
    audit = outcome.audit.model_copy(update={
        "reasons": decision.reasons,
        "inputs": {**outcome.audit.inputs, "decision": decision.model_dump(mode="json"),
                   "approval": {"status": "approved", "approvers": list(approvers),
                                "decided_at": at.isoformat(),
                                "window_expires_at": event.window_expires_at.isoformat()}}})
    return DelegationOutcome(decision, outcome.grant, audit)


def refused(held: HeldDelegation, status: str, denier: str,
            now: datetime) -> tuple[DelegationDecided, AuditRecord]:
    """The denial of a delegation an approver denied, or that nobody approved in time."""
    event, request = held.event, held.request
    if status == "denied":
        rule, why = APPROVAL_DENIED, f"denied by {denier} (a deny wins)"
    else:
        rule, why = APPROVAL_EXPIRED, (f"approval-expired: the {event.quorum} approvals "
                                       f"needed did not arrive before the window closed at "
                                       f"{event.window_expires_at.isoformat()}")
    decision = DelegationDecided(
        decision_id=derive_id("delegation", request.request_id, request.agent_id),
        request_id=request.request_id, agent_id=request.agent_id,
        delegate_id=request.delegate_id, parent_grant_id=request.parent_grant_id,
        outcome="denied", denied=tuple(ScopeDenial(scope=s, rule=rule, reason=why)
                                       for s in request.scopes),
        matched_rules=(*event.matched_rules, rule), reasons=(why,),
        policy_revision=event.policy_revision, decided_at=now)
    audit = AuditRecord(
        audit_id=derive_id("audit-delegation", request.request_id, request.agent_id),
        kind=DECIDED_KIND, agent_id=request.agent_id, occurred_at=now,
        subject_id=request.request_id, outcome="denied", reasons=(why,),
        rules=decision.matched_rules, policy_revision=event.policy_revision,
        inputs={"request": request.model_dump(mode="json"), "grant": None,
                "decision": decision.model_dump(mode="json"),
                "approval": {"status": status, "denier": denier or None}})
    return decision, audit
