"""Grant math (pure): ids, absolute expiry, and the events a decision or revocation produces.

Imports schemas and broker.policy only; ``now`` is always an argument. Ids derive from the input
event id (uuid5), so a redelivered request or signal maps to the same decision, grant and audit
ids and can never mint a second grant. Expiry is computed once, from the time Kafka appended the
request (``received_at``), so a redelivery computes the very same ``expires_at``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.policy import Evaluation, RiskAction, RiskContext
from schemas.events import (
    AgentProfile,
    AgentRevoked,
    AuditRecord,
    EscalationDecided,
    EscalationRequested,
    GrantExpired,
    GrantIssued,
    GrantRevoked,
    RiskObserved,
    ScopeDenial,
)

_NAMESPACE = uuid.UUID("6f1c7d52-2a7e-4f43-9d0e-6b8f3c1a9e10")
# Denial rule of a request decided while its audit record could not be written (fail closed).
AUDIT_UNAVAILABLE = "audit-unavailable"


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


def _unique(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _state_denial(
    request: EscalationRequested, state: AgentState, received_at: datetime, now: datetime
) -> ScopeDenial | None:
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


def state_denial(
    request: EscalationRequested, state: AgentState, received_at: datetime, now: datetime
) -> ScopeDenial | None:
    """Why the agent's state (quarantine, a revocation after the request) denies everything."""
    return _state_denial(request, state, received_at, now)


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
) -> Outcome:
    """Combine the policy evaluation with the agent's state into the decision's events.

    ``blocked_by`` denies every scope for a reason found outside the policy (a rate limit, or the
    audit that could not be written: fail closed); ``note`` adds context to the audit inputs. The
    audit record carries every input (request, profile, state, risk, times, ``blocked_by``) so
    that replay reproduces it exactly.
    """
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
    blocked = blocked_by or _state_denial(request, state, received_at, now)
    expires_at = received_at + timedelta(seconds=evaluation.duration_s)
    if blocked is None and evaluation.granted and expires_at <= now:
        blocked = ScopeDenial(
            scope="*",
            rule="stale-request",
            reason=f"received at {received_at.isoformat()}, the grant would have expired at "
            f"{expires_at.isoformat()} before it could be decided",
        )
    if blocked is not None:
        denied = tuple(
            ScopeDenial(scope=s, rule=blocked.rule, reason=blocked.reason) for s in request.scopes
        )
        return _outcome(request, evaluation, denied, (blocked.reason,), None, inputs, now,
                        blocked=True)
    if not evaluation.granted:
        return _outcome(request, evaluation, evaluation.denied, evaluation.reasons, None,
                        inputs, now)
    grant = GrantIssued(
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
    )
    return _outcome(request, evaluation, evaluation.denied, evaluation.reasons, grant, inputs, now)


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
    return Outcome(decision=decision, grant=grant, audit=decision_audit(decision, inputs))


def decision_audit(decision: EscalationDecided, inputs: dict[str, object]) -> AuditRecord:
    """The audit record of a decision, carrying the whole decision under ``inputs.decision``.

    A request may be decided more than once before one decision is stored (a commit blocked by a
    concurrent revocation, a crash before the commit): each attempt is audited before its commit
    and the last ``escalation.decided`` record of a request is the one that took effect. A
    record with ``inputs.recovered_from`` confirms a decision stored earlier.
    """
    suffix = "".join(f"#{k}={inputs[k]}" for k in ("attempt", "recovered_from") if inputs.get(k))
    blocked = inputs.get("blocked_by")
    suffix += f"#{blocked['rule']}" if isinstance(blocked, dict) else ""
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


@dataclass(frozen=True)
class RevocationPlan:
    """What the store must do for a revoking signal: markers and their lifetimes."""

    agent_id: str
    cause_id: str
    rule: str
    reason: str
    revoked_at: datetime
    quarantine_until: datetime | None
    marker_until: datetime


def plan_revocation(
    signal_id: str,
    agent_id: str,
    action: RiskAction,
    *,
    now: datetime,
    max_grant_s: int,
    margin_s: int,
) -> RevocationPlan:
    """The markers of a revoke-all: they outlive the longest grant the revocation could cancel."""
    quarantine_until = now + timedelta(seconds=action.quarantine_s) if action.quarantine_s else None
    blocked_until = quarantine_until or now
    marker_until = blocked_until + timedelta(seconds=max_grant_s + margin_s)
    return RevocationPlan(
        agent_id=agent_id,
        cause_id=signal_id,
        rule=action.rule or "revocation",
        reason=action.reason,
        revoked_at=now,
        quarantine_until=quarantine_until,
        marker_until=marker_until,
    )


def revoked_events(
    plan: RevocationPlan, grants: tuple[GrantIssued, ...]
) -> tuple[AgentRevoked, tuple[GrantRevoked, ...]]:
    """One ``agent.revoked`` for the revocation, and one ``grant.revoked`` per grant removed."""
    agent_event = AgentRevoked(
        agent_id=plan.agent_id,
        revoked_at=plan.revoked_at,
        reason=plan.reason,
        rule=plan.rule,
        cause_event_id=plan.cause_id,
        grant_ids=tuple(g.grant_id for g in grants),
        quarantined_until=plan.quarantine_until,
        markers_until=plan.marker_until,
    )
    return agent_event, tuple(
        GrantRevoked(
            grant_id=g.grant_id,
            agent_id=g.agent_id,
            revoked_at=plan.revoked_at,
            expires_at=g.expires_at,
            reason=plan.reason,
            rule=plan.rule,
            cause_event_id=plan.cause_id,
            quarantined_until=plan.quarantine_until,
        )
        for g in grants
    )


def risk_audit(
    signal: RiskObserved, action: RiskAction, revoked_ids: tuple[str, ...], now: datetime
) -> AuditRecord:
    """The audit record of one risk signal and what it did."""
    return AuditRecord(
        audit_id=derive_id("audit-risk", signal.signal_id, signal.subject_agent_id or ""),
        kind="risk.observed",
        agent_id=signal.subject_agent_id,
        occurred_at=now,
        subject_id=signal.signal_id,
        outcome="revoked" if action.revoke else "noted",
        reasons=(action.reason,),
        rules=(action.rule,) if action.rule else (),
        inputs={
            "signal": signal.model_dump(mode="json"),
            "revoked_grants": list(revoked_ids),
            "quarantine_s": action.quarantine_s,
            "now": now.isoformat(),
        },
    )


def lifecycle_audit(event: GrantRevoked | GrantExpired, now: datetime) -> AuditRecord:
    """The audit record of a revocation or expiry of one grant."""
    kind = "grant.revoked" if isinstance(event, GrantRevoked) else "grant.expired"
    reasons = (event.reason,) if isinstance(event, GrantRevoked) else ("reached expires_at",)
    return AuditRecord(
        audit_id=derive_id(f"audit-{kind}", event.grant_id, event.agent_id),
        kind=kind,
        agent_id=event.agent_id,
        occurred_at=now,
        subject_id=event.grant_id,
        outcome=kind.split(".")[1],
        reasons=reasons,
        rules=(event.rule,) if isinstance(event, GrantRevoked) else (),
        inputs={"event": event.model_dump(mode="json")},
    )
