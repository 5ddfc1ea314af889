"""Grant math (pure): ids, absolute expiry, and the events a decision produces.

Imports schemas and broker.policy only; ``now`` is always an argument. Ids derive from the input
event id (uuid5), so a redelivered request or signal maps to the same decision, grant and audit
ids and can never mint a second grant. Expiry is computed once, from the time Kafka appended the
request (``received_at``), so a redelivery computes the very same ``expires_at``.

``decide`` has three answers: a decision (``Outcome``: granted or denied), or, when the caller
can hold requests and the policy grants only on approval, ``HeldForApproval`` (the pending event
and its audit record; broker.grants.approvals decides once approvers answer).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, overload

from broker.policy import Evaluation, RiskContext
from schemas.events import (
    AgentProfile,
    AuditRecord,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    GrantIssued,
    ScopeDenial,
)

_NAMESPACE = uuid.UUID("6f1c7d52-2a7e-4f43-9d0e-6b8f3c1a9e10")
# Denial rule of a request decided while its audit record could not be written (fail closed).
AUDIT_UNAVAILABLE = "audit-unavailable"
# Denial rule of a request decided after its ``valid_until``: its client stopped waiting.
REQUEST_EXPIRED = "request-expired"


def derive_id(kind: str, source_id: str, agent_id: str = "") -> str:
    """A deterministic id for the ``kind`` effect of input ``source_id`` of one agent.

    The agent id is part of the name: agents are distinct identities, so two agents that pick
    the same request id still get distinct decision, grant and audit ids.
    """
    name = kind + "\x1f" + agent_id + "\x1f" + source_id
    return f"{kind}-{uuid.uuid5(_NAMESPACE, name)}"


@dataclass(frozen=True)
class AgentState:
    """What the grant store knows about an agent when a request is decided."""

    quarantined_until: datetime | None = None
    quarantine_rule: str = ""
    # Requests received at or before this instant are denied: the latest revoke-all, or the end
    # of its quarantine (so a request queued during a quarantine stays denied after it ends).
    revoked_at: datetime | None = None


def state_inputs(state: AgentState) -> dict[str, object]:
    """An agent state as audit inputs (what replay feeds back to ``decide``)."""
    return {
        "quarantined_until": _iso(state.quarantined_until),
        "quarantine_rule": state.quarantine_rule,
        "revoked_at": _iso(state.revoked_at),
    }


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


@dataclass(frozen=True)
class Outcome:
    """Everything one escalation decision produces; the shell stores and publishes it."""

    decision: EscalationDecided
    grant: GrantIssued | None
    audit: AuditRecord


@dataclass(frozen=True)
class Signer:
    """Who signed the request, as the identity gate verified it (``kid`` "": unsigned dev mode).

    Recorded on the grant (its key and the model's digest) and in the audit (``signed_by``).
    """

    principal: str
    kid: str = ""


@dataclass(frozen=True)
class Pending:
    """A held request: the pending event, the request, and what the evaluation already said."""

    event: EscalationPending
    request: EscalationRequested
    received_at: datetime  # Kafka append time of the request
    clamped_by: str | None
    denied: tuple[ScopeDenial, ...]  # scopes denied outright; they stay denied

    def to_json(self) -> str:
        """What the approval store keeps."""
        return json.dumps({
            "event": self.event.model_dump(mode="json"),
            "request": self.request.model_dump(mode="json"),
            "received_at": self.received_at.isoformat(), "clamped_by": self.clamped_by,
            "denied": [d.model_dump(mode="json") for d in self.denied]})

    @classmethod
    def from_json(cls, raw: str | bytes) -> Pending:
        """Inverse of ``to_json``."""
        data = json.loads(raw)
        return cls(EscalationPending.model_validate(data["event"]),
                   EscalationRequested.model_validate(data["request"]),
                   datetime.fromisoformat(data["received_at"]), data["clamped_by"],
                   tuple(ScopeDenial.model_validate(d) for d in data["denied"]))


@dataclass(frozen=True)
class HeldForApproval:
    """A request the policy grants only on approval: nothing is decided until approvers answer."""

    pending: Pending
    audit: AuditRecord


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def state_denial(
    request: EscalationRequested, state: AgentState, received_at: datetime, now: datetime
) -> ScopeDenial | None:
    """Why the agent's state (quarantine, a revocation after the request) denies everything."""
    if state.quarantined_until is not None and now < state.quarantined_until:
        return ScopeDenial(
            scope="*",
            rule=state.quarantine_rule or "quarantine",
            reason=f"agent {request.agent_id} is quarantined until "
            f"{state.quarantined_until.isoformat()}",
        )
    if state.revoked_at is not None and received_at <= state.revoked_at:
        return ScopeDenial(
            scope="*",
            rule="revocation",
            reason=f"request received at {received_at.isoformat()}, before the agent's "
            f"revocation (or its quarantine) ended at {state.revoked_at.isoformat()}; "
            "a revocation is never undone",
        )
    return None


def deadline_denial(request: EscalationRequested, now: datetime) -> ScopeDenial | None:
    """Why a request decided at ``now`` is too late: its client gave up at ``valid_until``."""
    if request.valid_until is None or now <= request.valid_until:
        return None
    return ScopeDenial(
        scope="*",
        rule=REQUEST_EXPIRED,
        reason=f"decided at {now.isoformat()}, after the request's valid_until "
        f"{request.valid_until.isoformat()}: its client has stopped waiting, so nothing is "
        "granted; send a new request",
    )


@overload
def decide(
    request: EscalationRequested, evaluation: Evaluation, *, agent: AgentProfile | None,
    state: AgentState, received_at: datetime, now: datetime, risk: RiskContext | None = ...,
    blocked_by: ScopeDenial | None = ..., note: dict[str, object] | None = ...,
    signer: Signer | None = ..., holds: Literal[False] = ..., deadline: bool = ...,
) -> Outcome: ...


@overload
def decide(
    request: EscalationRequested, evaluation: Evaluation, *, agent: AgentProfile | None,
    state: AgentState, received_at: datetime, now: datetime, risk: RiskContext | None = ...,
    blocked_by: ScopeDenial | None = ..., note: dict[str, object] | None = ...,
    signer: Signer | None = ..., holds: bool, deadline: bool = ...,
) -> Outcome | HeldForApproval: ...


def decide(
    request: EscalationRequested,
    evaluation: Evaluation,
    *,
    agent: AgentProfile | None,
    state: AgentState,
    received_at: datetime,
    now: datetime,
    risk: RiskContext | None = None,
    blocked_by: ScopeDenial | None = None,
    note: dict[str, object] | None = None,
    signer: Signer | None = None,
    holds: bool = False,
    deadline: bool = True,
) -> Outcome | HeldForApproval:
    """Combine the policy evaluation with the agent's state into the decision's events.

    ``blocked_by`` denies every scope for a reason found outside the policy (a rate limit, the
    identity gate's refusal, or the audit that could not be written: fail closed); ``note`` adds
    context to the audit inputs; ``signer`` is the verified signer of the request. The audit
    record carries every input (request, profile, state, risk, times, ``blocked_by``) so that
    replay reproduces it exactly. With ``holds``, a request that nothing denies and the policy
    grants only on approval is held instead (``HeldForApproval``). A request decided after its
    ``valid_until`` is denied (``request-expired``) unless ``deadline`` is False (the final
    decision of a held request: its pending notice answered the request in time).
    """
    blocked = (blocked_by or state_denial(request, state, received_at, now)
               or (deadline_denial(request, now) if deadline else None))
    if holds and blocked is None and evaluation.approval is not None:
        return HeldForApproval(*hold(request, evaluation, received_at=received_at, now=now, inputs={
            "request": request.model_dump(mode="json"),
            "agent": agent.model_dump(mode="json") if agent else None,
            "risk": {"agent": risk.agent, "request": risk.request} if risk else None,
            "received_at": received_at.isoformat(), "now": now.isoformat()}))
    inputs: dict[str, object] = {
        "request": request.model_dump(mode="json"),
        "agent": agent.model_dump(mode="json") if agent else None,
        "state": state_inputs(state),
        "risk": {"agent": risk.agent, "request": risk.request} if risk else None,
        "received_at": received_at.isoformat(),
        "now": now.isoformat(),
        **({"blocked_by": blocked_by.model_dump(mode="json")} if blocked_by else {}),
        **(note or {}),
    }
    expires_at = received_at + timedelta(seconds=evaluation.duration_s)
    blocked = blocked or _stale(evaluation, received_at, expires_at, now)
    if blocked is not None:
        denied = tuple(
            ScopeDenial(scope=s, rule=blocked.rule, reason=blocked.reason) for s in request.scopes
        )
        return _outcome(request, evaluation, denied, (blocked.reason,), None, inputs, now,
                        blocked=True, signer=signer)
    if not evaluation.granted:
        return _outcome(request, evaluation, evaluation.denied, evaluation.reasons, None,
                        inputs, now, signer=signer)
    grant = _grant(request, evaluation, agent, now, expires_at, signer)
    return _outcome(request, evaluation, evaluation.denied, evaluation.reasons, grant, inputs, now,
                    signer=signer)


def _stale(evaluation: Evaluation, received_at: datetime, expires_at: datetime,
           now: datetime) -> ScopeDenial | None:
    """A grant that would have expired before its request could be decided."""
    if not evaluation.granted or expires_at > now:
        return None
    return ScopeDenial(
        scope="*",
        rule="stale-request",
        reason=f"received at {received_at.isoformat()}, the grant would have expired at "
        f"{expires_at.isoformat()} before it could be decided",
    )


def _grant(
    request: EscalationRequested, evaluation: Evaluation, agent: AgentProfile | None,
    now: datetime, expires_at: datetime, signer: Signer | None,
) -> GrantIssued:
    """The grant of a granted request; a signed request records its key and the model digest."""
    signed: dict[str, str] = {} if signer is None else {
        "kid": signer.kid, "model_digest": agent.model.digest if agent else ""}
    return GrantIssued(
        grant_id=derive_id("grant", request.request_id, request.agent_id),
        agent_id=request.agent_id,
        request_id=request.request_id,
        scopes=evaluation.granted,
        resources=evaluation.resources,
        issued_at=now,
        expires_at=expires_at,
        policy_revision=evaluation.policy_revision,
        rules=evaluation.matched_rules,
        model_version=agent.model.version if agent else "",
        budgets=dict(evaluation.budgets),
        case_id=request.case_id,
        tenant=agent.tenant if agent else "default",
        **signed,
    )


def hold(request: EscalationRequested, evaluation: Evaluation, *, received_at: datetime,
         now: datetime, inputs: dict[str, object]) -> tuple[Pending, AuditRecord]:
    """The pending event of a request the policy grants only on approval, and its audit."""
    need = evaluation.approval
    assert need is not None, "hold() is for evaluations that ask for approval"
    event = EscalationPending(
        decision_id=derive_id("pending", request.request_id, request.agent_id),
        request_id=request.request_id, agent_id=request.agent_id, scopes=need.scopes,
        resources=evaluation.resources, duration_s=evaluation.duration_s, quorum=need.quorum,
        approvers=need.approvers,
        window_expires_at=received_at + timedelta(seconds=need.window_s),
        matched_rules=evaluation.matched_rules, tiers=evaluation.tiers,
        reasons=evaluation.reasons, policy_revision=evaluation.policy_revision, decided_at=now)
    denied = tuple(d for d in evaluation.denied if d.scope not in need.scopes)
    audit = AuditRecord(
        audit_id=derive_id("audit-pending", request.request_id, request.agent_id),
        kind="escalation.pending", agent_id=request.agent_id, occurred_at=now,
        subject_id=request.request_id, outcome="pending", reasons=event.reasons,
        rules=event.matched_rules, policy_revision=event.policy_revision,
        inputs={**inputs, "pending": event.model_dump(mode="json")})
    return Pending(event, request, received_at, evaluation.clamped_by, denied), audit


def _outcome(
    request: EscalationRequested,
    evaluation: Evaluation,
    denied: tuple[ScopeDenial, ...],
    reasons: tuple[str, ...],
    grant: GrantIssued | None,
    inputs: dict[str, object],
    now: datetime,
    *,
    blocked: bool = False,
    signer: Signer | None = None,
) -> Outcome:
    decision = EscalationDecided(
        decision_id=derive_id("decision", request.request_id, request.agent_id),
        request_id=request.request_id,
        agent_id=request.agent_id,
        outcome="granted" if grant else "denied",
        granted_scopes=grant.scopes if grant else (),
        resources=grant.resources if grant else (),
        denied=denied,
        grant_id=grant.grant_id if grant else None,
        expires_at=grant.expires_at if grant else None,
        duration_s=evaluation.duration_s if grant else 0,
        clamped_by=evaluation.clamped_by if grant else None,
        matched_rules=_unique(
            (() if blocked else evaluation.matched_rules) + tuple(d.rule for d in denied)
        ),
        reasons=reasons,
        policy_revision=evaluation.policy_revision,
        decided_at=now,
        tiers=evaluation.tiers,
    )
    audit = decision_audit(decision, inputs, signer=signer)
    return Outcome(decision=decision, grant=grant, audit=audit)


def decision_audit(
    decision: EscalationDecided, inputs: dict[str, object], *, signer: Signer | None = None
) -> AuditRecord:
    """The audit record of a decision, carrying the whole decision under ``inputs.decision``.

    A request may be decided more than once before one decision is stored (a commit blocked by a
    concurrent revocation, a crash before the commit): each attempt is audited before its commit
    and the last ``escalation.decided`` record of a request is the one that took effect. A
    record with ``inputs.recovered_from`` confirms a decision stored earlier. A signed request's
    record ends with ``signed_by`` (the principal and its key).
    """
    suffix = "".join(f"#{k}={inputs[k]}" for k in ("attempt", "recovered_from") if inputs.get(k))
    blocked = inputs.get("blocked_by")
    suffix += f"#{blocked['rule']}" if isinstance(blocked, dict) else ""
    signed = {} if signer is None else {
        "signed_by": {"principal": signer.principal, "kid": signer.kid or None}}
    return AuditRecord(
        audit_id=derive_id("audit", decision.request_id + suffix, decision.agent_id),
        kind="escalation.decided",
        agent_id=decision.agent_id,
        occurred_at=decision.decided_at,
        subject_id=decision.request_id,
        outcome=decision.outcome,
        reasons=decision.reasons,
        rules=decision.matched_rules,
        policy_revision=decision.policy_revision,
        inputs={
            **inputs,
            "grant_id": decision.grant_id,
            "expires_at": decision.expires_at.isoformat() if decision.expires_at else None,
            "decision": decision.model_dump(mode="json"),
            **signed,
        },
    )


def duplicate_audit(
    decision: EscalationDecided, live: bool, origin: str, now: datetime
) -> AuditRecord:
    """The audit record of a request delivered again after its decision was published."""
    if decision.outcome == "granted" and not live:
        outcome = "denied"
        reason = (
            f"duplicate of a request whose grant {decision.grant_id} is no longer active "
            "(revoked, released or expired); a revocation is never undone"
        )
    else:
        outcome = "duplicate"
        reason = "request delivered again; the recorded decision stands, nothing new was granted"
    return AuditRecord(
        audit_id=derive_id("audit-duplicate", f"{decision.request_id}@{origin}", decision.agent_id),
        kind="escalation.duplicate",
        agent_id=decision.agent_id,
        occurred_at=now,
        subject_id=decision.request_id,
        outcome=outcome,
        reasons=(reason,),
        rules=decision.matched_rules,
        policy_revision=decision.policy_revision,
        inputs={"origin": origin, "grant_id": decision.grant_id},
    )
