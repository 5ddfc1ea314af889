"""Revocation (pure): the markers of a revoke-all, the events it produces, and their audit.

Imports schemas, broker.grants.decide and broker.policy; ``now`` is always an argument. A
revocation's markers outlive the longest grant it could cancel (a revocation is never undone).
A signal that does not revoke raises the agent's live risk for ``LIVE_RISK``; its audit record
says until when (``noted_until``), so a rebuilt view gets the live risk back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.grants.decide import derive_id
from broker.policy import RiskAction
from schemas.events import (
    AgentRevoked,
    AuditRecord,
    GrantExpired,
    GrantIssued,
    GrantRevoked,
    RiskObserved,
)

LIVE_RISK = timedelta(minutes=10)  # how long a non-revoking signal raises the agent's risk
OPERATOR_REVOKE_RULE = "operator-revoke"  # the rule of every revocation an operator asked for


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


def grant_revocation(grant: GrantIssued, cause_id: str, reason: str,
                     at: datetime) -> GrantRevoked:
    """The ``grant.revoked`` of an operator's revocation of one grant (``cause_id``: the
    command's id; ``reason`` names the operator)."""
    return GrantRevoked(
        grant_id=grant.grant_id, agent_id=grant.agent_id, revoked_at=at,
        expires_at=grant.expires_at, reason=reason, rule=OPERATOR_REVOKE_RULE,
        cause_event_id=cause_id,
    )


def risk_audit(
    signal: RiskObserved, action: RiskAction, revoked_ids: tuple[str, ...], now: datetime, *,
    signed_by: str | None = None, noted_until: datetime | None = None,
) -> AuditRecord:
    """The audit record of one risk signal and what it did (``signed_by``: the verified
    principal whose key signed it; ``noted_until``: the live risk it raised lasts until then)."""
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
            "signed_by": signed_by,
            **({"noted_until": noted_until.isoformat()} if noted_until else {}),
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
