"""Operator routes: revoke an agent, revocation propagation status. L3. Imports fastapi, broker.

Both need an operator's assertion. A revocation is published as an operator risk signal that
carries that assertion, so the worker audits it as signed by that operator; the call returns
once a worker applied it, with the consistency token of the revocation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from broker.api.auth import Operator, OperatorOfAgent, runtime_of, spend
from broker.api.bodies import AgentIdPath, RevokeBody
from broker.api.problems import PROBLEMS, Refused
from broker.delivery.propagation import RevocationStatus
from broker.errors import BrokerError, DecisionTimeout
from broker.sdk.operator.client import revoke as sdk_revoke

router = APIRouter(tags=["operators"], responses=PROBLEMS)


@router.post("/v1/operator/agents/{agent_id}/revoke")
def revoke(agent_id: AgentIdPath, body: RevokeBody, request: Request,
           who: OperatorOfAgent) -> dict[str, Any]:
    """Revoke every grant of ``agent_id``; returns the revoked grants and the consistency token."""
    runtime = runtime_of(request)
    spend(request, who)
    try:
        rev = sdk_revoke(
            runtime.settings, runtime.kafka, agent_id, body.reason, operator=who.name,
            trust=runtime.verifier(), timeout=runtime.settings.decision_timeout_s,
            publisher=runtime.relay(who.assertion.token), watcher=runtime.audits,
        )
    except DecisionTimeout as exc:
        raise Refused(504, str(exc), kind="timeout") from exc
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Kafka up?)", kind="unavailable") from exc
    runtime.metrics.requests.labels("revocation", "revoked").inc()
    return {
        "signal_id": rev.signal_id, "agent_id": rev.agent_id, "grant_ids": list(rev.grant_ids),
        "revoked_at": rev.revoked_at.isoformat(), "consistency_token": rev.consistency_token,
        "reasons": list(rev.reasons),
    }


@router.get("/v1/operator/revocations")
def revocations(request: Request, who: Operator) -> dict[str, Any]:
    """Per enforcement point: confirmed revocations with propagation times, and unconfirmed ones
    (of the operator's tenants' agents only, for an operator scoped to tenants)."""
    runtime = runtime_of(request)
    return scoped(status_json(runtime.metrics.status(), datetime.now(UTC)),
                  lambda agent_id: runtime.sees(who.principal.id, agent_id))


def scoped(status: dict[str, Any], sees: Callable[[str | None], bool]) -> dict[str, Any]:
    """``status_json``'s rows about agents ``sees`` keeps (a point's percentiles stay whole)."""
    return {**status,
            "revocations": [r for r in status["revocations"] if sees(r["agent_id"])],
            "enforcement_points": [
                {**p, "confirmed": [c for c in p["confirmed"] if sees(c["agent_id"])],
                 "unconfirmed": [u for u in p["unconfirmed"] if sees(u["agent_id"])]}
                for p in status["enforcement_points"]]}


def status_json(status: RevocationStatus, now: datetime) -> dict[str, Any]:
    """The revocation status as JSON (shared with ``permbroker revocations status --json``)."""
    return {
        "revocations": [
            {"cause_event_id": r.cause_event_id, "agent_id": r.agent_id,
             "revoked_at": r.revoked_at.isoformat(), "rule": r.rule,
             "grant_ids": list(r.grant_ids)}
            for r in status.revocations
        ],
        "enforcement_points": [
            {
                "name": p.name, "topic": p.topic, "silent": p.silent(now),
                "last_report": p.last_report.reported_at.isoformat() if p.last_report else None,
                "staleness_s": p.last_report.staleness_s if p.last_report else None,
                "confirmed": [
                    {"cause_event_id": c.cause_event_id, "agent_id": c.agent_id,
                     "propagation_ms": round(c.seconds * 1000, 1), "replayed": c.replayed,
                     "applied_at": c.applied_at.isoformat()}
                    for c in p.confirmed
                ],
                "unconfirmed": [
                    {"cause_event_id": r.cause_event_id, "agent_id": r.agent_id,
                     "revoked_at": r.revoked_at.isoformat(),
                     "age_s": round((now - r.revoked_at).total_seconds(), 1)}
                    for r in p.unconfirmed
                ],
                "p50_ms": _ms(p.percentile(0.5)), "max_ms": _ms(p.percentile(1.0)),
            }
            for p in status.points
        ],
    }


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None
