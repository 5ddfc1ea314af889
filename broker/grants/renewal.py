"""Renewal and release (pure): the events a renewal or release request produces.

Imports schemas, broker.grants and broker.policy; ``now`` is always an argument.

A renewal is evaluated by policy like a request, with the renewal's fresh evidence, for the
grant's own scopes and resources: every scope must still be granted. The new absolute expiry is
``received_at + the clamped duration`` (the renewal's own append time, so a redelivery computes
the same expiry) and must stay within the cumulative maximum of every granting rule
(``max_total_duration``, measured from the grant's ``issued_at``); beyond it the renewal is
refused, naming the rule and how much is left. Agents act only for themselves: the grant is looked
up under the requesting agent, so another agent's grant id is simply not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.grants.decide import AgentState, derive_id, state_denial
from broker.policy import Policy, RiskContext
from broker.policy.model import format_duration
from schemas.events import (
    AgentProfile,
    AuditRecord,
    EscalationRequested,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
)

NOT_ACTIVE = "grant-not-active"
NO_EXTENSION = "renewal-would-not-extend"


@dataclass(frozen=True)
class RenewalOutcome:
    """A renewal's decision, the renewed grant (if any) and its audit record."""

    decision: RenewalDecided
    renewed: GrantRenewed | None
    audit: AuditRecord


@dataclass(frozen=True)
class _Refusal:
    rule: str
    reason: str


def _as_request(renewal: RenewalRequested, grant: GrantIssued) -> EscalationRequested:
    return EscalationRequested(
        request_id=renewal.request_id,
        agent_id=renewal.agent_id,
        scopes=grant.scopes,
        resources=grant.resources,
        duration_s=renewal.duration_s,
        reason=renewal.reason,
        confidence=renewal.confidence,
        risk_score=renewal.risk_score,
        signals=renewal.signals,
        requested_at=renewal.requested_at,
    )


def decide_renewal(
    renewal: RenewalRequested,
    grant: GrantIssued | None,
    policy: Policy,
    *,
    agent: AgentProfile | None,
    risk: RiskContext,
    state: AgentState,
    received_at: datetime,
    now: datetime,
) -> RenewalOutcome:
    """Renew ``grant`` (the requesting agent's live grant, or None) or say why not."""
    if grant is None or grant.agent_id != renewal.agent_id:
        refusal = _Refusal(
            NOT_ACTIVE,
            f"grant {renewal.grant_id} is not an active grant of {renewal.agent_id} "
            "(expired, revoked, released, or never yours); ask for a new escalation",
        )
        return _renewal(renewal, None, policy.revision, now, refusal=refusal)
    request = _as_request(renewal, grant)
    blocked = state_denial(request, state, received_at, now)
    if blocked is not None:
        refusal = _Refusal(blocked.rule, blocked.reason)
        return _renewal(renewal, grant, policy.revision, now, refusal)
    return _evaluate(renewal, grant, policy, request, agent, risk, received_at, now)


def _evaluate(
    renewal: RenewalRequested, grant: GrantIssued, policy: Policy, request: EscalationRequested,
    agent: AgentProfile | None, risk: RiskContext, received_at: datetime, now: datetime,
) -> RenewalOutcome:
    """The policy part: every scope still granted, and within the cumulative maximum."""
    evaluation = policy.evaluate(request, agent, risk, now)
    if evaluation.denied:
        first = evaluation.denied[0]
        refusal = _Refusal(first.rule, f"{first.scope} would no longer be granted: {first.reason}")
        return _renewal(renewal, grant, policy.revision, now, refusal, evaluation.matched_rules)
    rules = [r for r in (policy.rule(i) for i in evaluation.matched_rules) if r is not None]
    limit, by = min((policy.total_limit(r) for r in rules), default=(0, "no granting rule"))
    new_expiry = received_at + timedelta(seconds=evaluation.duration_s)
    over = _limit_refusal(grant, new_expiry, limit, by, received_at)
    if over is not None:
        return _renewal(renewal, grant, policy.revision, now, over, evaluation.matched_rules, limit)
    renewed = grant_renewed(grant, renewal.request_id, new_expiry, now, policy.revision,
                            evaluation.matched_rules)
    reasons = (*evaluation.reasons, f"cumulative maximum {format_duration(limit)} ({by})")
    return _renewal(renewal, grant, policy.revision, now, None, evaluation.matched_rules, limit,
                    renewed, reasons)


def grant_renewed(
    grant: GrantIssued, request_id: str, expires_at: datetime, renewed_at: datetime,
    revision: str, rules: tuple[str, ...],
) -> GrantRenewed:
    """The ``grant.renewed`` event of a renewal of ``grant`` to ``expires_at``."""
    return GrantRenewed(
        grant_id=grant.grant_id, agent_id=grant.agent_id, request_id=request_id,
        scopes=grant.scopes, resources=grant.resources, renewed_at=renewed_at,
        previous_expires_at=grant.expires_at, expires_at=expires_at, policy_revision=revision,
        rules=rules,
    )


def _limit_refusal(
    grant: GrantIssued, new_expiry: datetime, limit: int, by: str, received_at: datetime
) -> _Refusal | None:
    """Refuse a renewal that would not extend the grant or would pass its cumulative maximum."""
    rule = by.split(":", 1)[0].removeprefix("rule ")
    if new_expiry <= grant.expires_at:
        return _Refusal(
            NO_EXTENSION,
            f"the grant already lasts until {grant.expires_at.isoformat()}, not before the "
            f"renewal's {new_expiry.isoformat()}; nothing to renew",
        )
    cap = grant.issued_at + timedelta(seconds=limit)
    if new_expiry > cap:
        left = max((cap - received_at).total_seconds(), 0.0)
        return _Refusal(
            rule,
            f"renewal to {new_expiry.isoformat()} would exceed the cumulative maximum "
            f"({by}) counted from the grant's issue at "
            f"{grant.issued_at.isoformat()}: it may last until {cap.isoformat()}, "
            f"{left:.0f}s from the renewal request",
        )
    return None


def _renewal(
    renewal: RenewalRequested,
    grant: GrantIssued | None,
    revision: str,
    now: datetime,
    refusal: _Refusal | None,
    matched: tuple[str, ...] = (),
    limit: int | None = None,
    renewed: GrantRenewed | None = None,
    reasons: tuple[str, ...] = (),
) -> RenewalOutcome:
    expires = renewed.expires_at if renewed else (grant.expires_at if grant else None)
    total = int((expires - grant.issued_at).total_seconds()) if grant and expires else 0
    decision = RenewalDecided(
        decision_id=derive_id("renewal", renewal.request_id, renewal.agent_id),
        request_id=renewal.request_id,
        agent_id=renewal.agent_id,
        grant_id=renewal.grant_id,
        outcome="renewed" if renewed else "denied",
        expires_at=expires,
        previous_expires_at=grant.expires_at if grant else None,
        total_duration_s=total,
        max_total_duration_s=limit,
        rule=refusal.rule if refusal else None,
        reasons=(refusal.reason,) if refusal else reasons,
        matched_rules=matched + ((refusal.rule,) if refusal else ()),
        policy_revision=revision,
        decided_at=now,
    )
    inputs: dict[str, object] = {
        "renewal": renewal.model_dump(mode="json"),
        "grant": grant.model_dump(mode="json") if grant else None,
        "decision": decision.model_dump(mode="json"),  # the new expiry, for replay as of T
        "now": now.isoformat(),
    }
    return RenewalOutcome(decision, renewed, _audit("grant.renewal", decision, inputs, revision))


def _audit(
    kind: str, decision: RenewalDecided | ReleaseDecided, inputs: dict[str, object],
    revision: str = "",
) -> AuditRecord:
    """The audit record of a renewal or release decision."""
    rules = decision.matched_rules if isinstance(decision, RenewalDecided) else (
        () if decision.outcome == "released" else (NOT_ACTIVE,))
    return AuditRecord(
        audit_id=derive_id("audit", decision.request_id, decision.agent_id), kind=kind,
        agent_id=decision.agent_id,
        occurred_at=decision.decided_at, subject_id=decision.request_id,
        outcome=decision.outcome, reasons=decision.reasons, rules=rules,
        policy_revision=revision, inputs=inputs,
    )


def decide_release(
    release: ReleaseRequested, grant: GrantIssued | None, now: datetime
) -> tuple[ReleaseDecided, GrantReleased | None, AuditRecord]:
    """Release the requesting agent's own live grant, or say why not."""
    ok = grant is not None and grant.agent_id == release.agent_id
    reason = (
        f"released by {release.agent_id}" + (f": {release.reason}" if release.reason else "")
        if ok
        else f"grant {release.grant_id} is not an active grant of {release.agent_id} "
        "(expired, revoked, already released, or never yours)"
    )
    decision = ReleaseDecided(
        decision_id=derive_id("release", release.request_id, release.agent_id),
        request_id=release.request_id,
        agent_id=release.agent_id,
        grant_id=release.grant_id,
        outcome="released" if ok else "denied",
        reasons=(reason,),
        decided_at=now,
    )
    event = (
        GrantReleased(
            grant_id=release.grant_id, agent_id=release.agent_id, released_at=now,
            reason=release.reason,
        )
        if ok
        else None
    )
    inputs: dict[str, object] = {
        "release": release.model_dump(mode="json"), "now": now.isoformat(),
    }
    return decision, event, _audit("grant.release", decision, inputs)
