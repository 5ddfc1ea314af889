"""Approvals with quorum (pure): judge votes, decide a held request when its window closes.

Imports broker.grants, broker.policy, schemas, stdlib; time is always an argument.

A request whose policy evaluation asks for approval is held by ``decide`` (``EscalationPending``,
``broker.grants.decide.hold``): nothing is granted. Its window ends at the request's Kafka append
time + the approval window, so a redelivery computes the same end. Each approver counts once; the
requesting agent never counts (no self-approval); one deny ends it. When the quorum is reached,
the decision is made at the deciding vote's append time ``T``: the policy is evaluated again at
``T`` (the ceiling, deny rules and tiers as they are then), the agent's revocation markers and
quarantine are checked (a revocation after the request is never undone), and the grant expires
at ``T`` + the clamped duration: its clock starts at approval. An unanswered request ends
``approval-expired``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from broker.grants.decide import AgentState, Outcome, Pending, decide, derive_id
from broker.grants.delegation_hold import HeldDelegation
from broker.policy import Evaluation, Policy, RiskContext
from broker.policy.model import APPROVAL_DENIED, APPROVAL_EXPIRED
from schemas.events import AgentProfile, ApprovalVoted, AuditRecord, ScopeDenial

APPROVAL_RECHECK = "approval-recheck"  # approved, but the policy at approval time says no
SELF_APPROVAL = "approval:self"
NOT_AN_APPROVER = "approval:not-an-approver"
WINDOW_CLOSED = "approval:window-closed"
Status = Literal["pending", "approved", "denied", "expired"]


@dataclass(frozen=True)
class Resolution:
    """How a held request ended: at ``decided_at``, approved by whom, or denied by whom."""

    status: Status
    decided_at: datetime
    approvers: tuple[str, ...] = ()
    denier: str = ""


def vote_problem(vote: ApprovalVoted, pending: Pending | HeldDelegation,
                 received_at: datetime) -> ScopeDenial | None:
    """Why a vote does not count (self-approval, not an approver, window closed), or None."""
    event = pending.event
    if vote.approver == vote.agent_id or vote.approver == event.agent_id:
        return ScopeDenial(scope="*", rule=SELF_APPROVAL, reason=f"{vote.approver} requested "
                           "this escalation; the requesting agent can never approve its own")
    if isinstance(pending, HeldDelegation) and vote.approver == pending.request.delegate_id:
        return ScopeDenial(scope="*", rule=SELF_APPROVAL, reason=f"{vote.approver} is the "
                           "delegate of this delegation; it can never approve what it receives")
    if vote.approver not in event.approvers:
        return ScopeDenial(scope="*", rule=NOT_AN_APPROVER, reason=f"{vote.approver} is not "
                           f"an approver of this request ({', '.join(event.approvers)})")
    if received_at >= event.window_expires_at:
        return ScopeDenial(scope="*", rule=WINDOW_CLOSED, reason=f"vote appended at "
                           f"{received_at.isoformat()}, after the approval window closed at "
                           f"{event.window_expires_at.isoformat()}")
    return None


def vote_audit(vote: ApprovalVoted, received_at: datetime, outcome: str, reason: str,
               *, rule: str = "", signer: str = "") -> AuditRecord:
    """The audit record of one vote (counted, duplicate, refused...); redelivery-safe id."""
    return AuditRecord(
        audit_id=derive_id("audit-vote", f"{vote.vote_id}#{outcome}", vote.agent_id),
        kind="approval.voted", agent_id=vote.agent_id, occurred_at=received_at,
        subject_id=vote.request_id, outcome=outcome, reasons=(reason,),
        rules=(rule,) if rule else (),
        inputs={"vote": vote.model_dump(mode="json"), "received_at": received_at.isoformat(),
                "signed_by": signer or None})


def resolve(pending: Pending, resolution: Resolution, *, policy: Policy,
            agent: AgentProfile | None, state: AgentState, risk: RiskContext,
            blocked_by: ScopeDenial | None = None) -> Outcome:
    """The final decision of a held request (granted only if approved and still allowed)."""
    at = resolution.decided_at
    if resolution.status == "approved":
        evaluation = _recheck(pending, resolution, policy, agent, risk)
    else:
        evaluation = _closed(pending, resolution)
    blocked = blocked_by or _revoked_since(pending, state)
    inputs: dict[str, object] = {"approval": {
        "status": resolution.status, "approvers": list(resolution.approvers),
        "denier": resolution.denier or None, "decided_at": at.isoformat(),
        "request_received_at": pending.received_at.isoformat(),
        "window_expires_at": pending.event.window_expires_at.isoformat()}}
    # No deadline: the pending notice answered the request in time; the window governs now.
    outcome = decide(pending.request, evaluation, agent=agent, state=state, received_at=at,
                     now=at, risk=risk, blocked_by=blocked, note=inputs, deadline=False)
    decision = outcome.decision.model_copy(
        update={"approvals": resolution.approvers, "tiers": pending.event.tiers})
    audit = outcome.audit.model_copy(update={
        "audit_id": derive_id("audit-approval", pending.request.request_id
                              + (f"#{blocked.rule}" if blocked else ""), decision.agent_id),
        "kind": "approval.decided",
        "inputs": {**outcome.audit.inputs, "decision": decision.model_dump(mode="json")}})
    return Outcome(decision, outcome.grant, audit)


def _recheck(pending: Pending, resolution: Resolution, policy: Policy,
             agent: AgentProfile | None, risk: RiskContext) -> Evaluation:
    """Approved: grant what the policy still grants at approval time (with or w/o approval)."""
    now = policy.evaluate(pending.request, agent, risk, resolution.decided_at)
    still = set(now.granted) | set(now.approval.scopes if now.approval else ())
    lost = [s for s in pending.event.scopes if s not in still]
    event = pending.event
    if lost:
        why = {d.scope: f"{d.rule}: {d.reason}" for d in now.denied}
        denied = tuple(ScopeDenial(
            scope=s, rule=APPROVAL_RECHECK, reason=f"approved, but at approval time policy "
            f"{now.policy_revision} no longer grants it ({why.get(s, 'not granted')})")
            for s in event.scopes)
        return Evaluation((), denied + pending.denied, (), 0, None, event.matched_rules,
                          tuple(d.reason for d in denied), now.policy_revision, event.tiers)
    duration = min(event.duration_s, now.duration_s or event.duration_s)
    approved = (f"approved by {', '.join(resolution.approvers)} ({len(resolution.approvers)} "
                f"of {len(event.approvers)}, quorum {event.quorum}) at "
                f"{resolution.decided_at.isoformat()}; the grant's {duration}s start there")
    return Evaluation(event.scopes, pending.denied, event.resources, duration,
                      pending.clamped_by, event.matched_rules, (*event.reasons, approved),
                      now.policy_revision, event.tiers,
                      budgets=tuple(b for b in now.budgets if b[0] in event.scopes))


def _closed(pending: Pending, resolution: Resolution) -> Evaluation:
    """Denied by an approver, or expired unanswered: every held scope is denied, saying so."""
    event = pending.event
    if resolution.status == "denied":
        rule, why = APPROVAL_DENIED, f"denied by {resolution.denier} (a deny wins)"
    else:
        rule = APPROVAL_EXPIRED
        why = (f"approval-expired: {len(resolution.approvers)} of the {event.quorum} approvals "
               f"needed arrived before the window closed at "
               f"{event.window_expires_at.isoformat()}")
    denied = tuple(ScopeDenial(scope=s, rule=rule, reason=why) for s in event.scopes)
    return Evaluation((), denied + pending.denied, (), 0, None, event.matched_rules,
                      (*event.reasons, why), event.policy_revision, event.tiers)


def _revoked_since(pending: Pending, state: AgentState) -> ScopeDenial | None:
    """A revocation after the request (and before its approval) denies it: never undone."""
    if state.revoked_at is not None and pending.received_at <= state.revoked_at:
        return ScopeDenial(scope="*", rule="revocation", reason=(
            f"the agent's grants were revoked at {state.revoked_at.isoformat()}, after this "
            f"request (received {pending.received_at.isoformat()}); an approval never undoes "
            "a revocation"))
    return None
