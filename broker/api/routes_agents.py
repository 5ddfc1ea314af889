"""Routes for resource services (check) and agents (escalate, renew, release, list). L3.

Imports fastapi, pydantic, broker, schemas. Agent routes relay to Kafka exactly what the agent
SDK would send and wait for the worker's decision, so agents that cannot speak Kafka get the same
semantics (and the same consistency tokens). Blocking calls run in FastAPI's thread pool.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from broker.api.auth import require_agent, require_service
from broker.api.runtime import Runtime
from broker.errors import BrokerError, DecisionTimeout
from broker.sdk.resource.enforce import check
from schemas import topics
from schemas.events import (
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    GrantIssued,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    Resource,
    Scope,
    Signals,
    Unit,
    WireModel,
)

router = APIRouter()


class Body(BaseModel):
    """Request bodies are untrusted: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class CheckBody(Body):
    agent_id: str
    scope: str
    resource: str = ""
    consistency_token: str | None = Field(None, description="answer only from a view this fresh")


class EscalationBody(Body):
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=32)]
    resources: tuple[Resource, ...] = ()
    duration_s: Annotated[int, Field(gt=0)]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    confidence: Unit
    risk_score: Unit = 0.0
    case_id: str | None = None
    signals: Signals = Field(default_factory=dict)


class RenewalBody(Body):
    duration_s: Annotated[int, Field(gt=0)]
    reason: Annotated[str, Field(min_length=1, max_length=2000)]
    confidence: Unit
    risk_score: Unit = 0.0
    signals: Signals = Field(default_factory=dict)


class ReleaseBody(Body):
    reason: Annotated[str, Field(max_length=2000)] = ""


def runtime_of(request: Request) -> Runtime:
    """The app's live components."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def _relay(runtime: Runtime, kind: str, request: WireModel, request_id: str,
           *, pending: bool = False) -> Any:
    assert runtime.publisher is not None and runtime.decisions is not None
    wait = runtime.decisions.wait_pending if pending else runtime.decisions.wait
    try:
        runtime.publisher.publish(topics.ESCALATIONS.name, request)
        decision = wait(request_id, runtime.settings.decision_timeout_s)
    except DecisionTimeout as exc:
        runtime.metrics.requests.labels(kind, "timeout").inc()
        raise HTTPException(504, str(exc)) from exc
    except BrokerError as exc:
        runtime.metrics.requests.labels(kind, "unavailable").inc()
        raise HTTPException(503, f"{exc} (is Kafka up?)") from exc
    outcome = getattr(decision, "outcome", "pending")  # held for approval: no outcome yet
    runtime.metrics.requests.labels(kind, outcome).inc()
    return decision


@router.post("/v1/check", tags=["resource services"], dependencies=[Depends(require_service)])
def check_action(body: CheckBody, request: Request) -> dict[str, Any]:
    """May this agent use this scope on this resource now? Answered from the grant view."""
    runtime = runtime_of(request)
    assert runtime.view is not None
    verdict = check(runtime.view, body.agent_id, body.scope, body.resource,
                    at_least=body.consistency_token)
    outcome = "allowed" if verdict.allowed else "unavailable" if verdict.unavailable else "denied"
    runtime.metrics.checks.labels(outcome).inc()
    grant = verdict.grant
    return {
        "allowed": verdict.allowed, "unavailable": verdict.unavailable, "reason": verdict.reason,
        "grant_id": grant.grant_id if grant else None,
        "expires_at": grant.expires_at.isoformat() if grant else None,
        "remaining_s": round((grant.expires_at - datetime.now(UTC)).total_seconds(), 1)
        if grant else None,
    }


@router.get("/v1/agents/{agent_id}/grants", tags=["agents"])
async def list_grants(agent_id: str, request: Request) -> list[dict[str, Any]]:
    """The agent's active grants (absolute expiry and time left); the agent or an operator."""
    require_agent(request, agent_id, operator_ok=True)
    runtime, now = runtime_of(request), datetime.now(UTC)
    assert runtime.store is not None
    try:
        grants: list[GrantIssued] = await runtime.store.active_grants(agent_id, now)
    except BrokerError as exc:
        raise HTTPException(503, f"{exc} (is Redis up?)") from exc
    return [
        {**g.model_dump(mode="json"),
         "remaining_s": round((g.expires_at - now).total_seconds(), 1)}
        for g in sorted(grants, key=lambda g: g.expires_at)
    ]


@router.post("/v1/agents/{agent_id}/escalations", tags=["agents"])
def escalate(agent_id: str, body: EscalationBody,
             request: Request) -> EscalationDecided | EscalationPending:
    """Ask for elevated scopes as ``agent_id``; returns the decision (reasons, expiry, token),
    or, when the policy asks for approval, the pending notice (approvers, window end)."""
    require_agent(request, agent_id)
    req = EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent_id, requested_at=datetime.now(UTC),
        **body.model_dump(),
    )
    decision: EscalationDecided | EscalationPending = _relay(
        runtime_of(request), "escalation", req, req.request_id, pending=True)
    return decision


@router.post("/v1/agents/{agent_id}/grants/{grant_id}/renewal", tags=["agents"])
def renew(agent_id: str, grant_id: str, body: RenewalBody, request: Request) -> RenewalDecided:
    """Renew one of the agent's own grants with fresh evidence: new absolute expiry or why not."""
    require_agent(request, agent_id)
    req = RenewalRequested(
        request_id=f"renew-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
        requested_at=datetime.now(UTC), **body.model_dump(),
    )
    decision: RenewalDecided = _relay(runtime_of(request), "renewal", req, req.request_id)
    return decision


@router.post("/v1/agents/{agent_id}/grants/{grant_id}/release", tags=["agents"])
def release(agent_id: str, grant_id: str, body: ReleaseBody, request: Request) -> ReleaseDecided:
    """Give one of the agent's own grants back early."""
    require_agent(request, agent_id)
    req = ReleaseRequested(
        request_id=f"release-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
        requested_at=datetime.now(UTC), reason=body.reason,
    )
    decision: ReleaseDecided = _relay(runtime_of(request), "release", req, req.request_id)
    return decision
