"""Routes for resource services (check) and agents (escalate, renew, release, list). L3.

Imports fastapi, broker, schemas. Agent routes relay to Kafka what the agent SDK would send,
carrying the agent's own assertion (``relay``), and wait for the worker's decision: the worker
judges it as the agent's own request (suspended, quarantined, revoked key: refused alike), so
agents that cannot speak Kafka get the same semantics and the same consistency tokens.
Blocking calls run in FastAPI's thread pool.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from broker.api.auth import (
    AgentItself,
    AgentOrOperator,
    Caller,
    Service,
    runtime_of,
    scoped,
    spend,
)
from broker.api.bodies import (
    AgentIdPath,
    CheckBody,
    EscalationBody,
    IdPath,
    ReleaseBody,
    RenewalBody,
)
from broker.api.problems import PROBLEMS, Refused
from broker.api.runtime import Runtime
from broker.errors import BrokerError, DecisionTimeout
from broker.sdk.resource.enforce import check_agent
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
    WireModel,
)

router = APIRouter(responses=PROBLEMS)


def relay(request: Request, who: Caller, kind: str, event: WireModel, request_id: str,
          *, pending: bool = False) -> Any:
    """Publish ``event`` as the caller's own (its assertion, used up now) and await the answer."""
    runtime: Runtime = runtime_of(request)
    assert runtime.decisions is not None
    spend(request, who)
    wait = runtime.decisions.wait_pending if pending else runtime.decisions.wait
    try:
        runtime.relay(who.assertion.token).publish(topics.ESCALATIONS.name, event)
        decision = wait(request_id, runtime.settings.decision_timeout_s)
    except DecisionTimeout as exc:
        runtime.metrics.requests.labels(kind, "timeout").inc()
        raise Refused(504, str(exc), kind="timeout") from exc
    except BrokerError as exc:
        runtime.metrics.requests.labels(kind, "unavailable").inc()
        raise Refused(503, f"{exc} (is Kafka up?)", kind="unavailable") from exc
    outcome = getattr(decision, "outcome", "pending")  # held for approval: no outcome yet
    runtime.metrics.requests.labels(kind, outcome).inc()
    return decision


@router.post("/v1/check", tags=["resource services"])
async def check_action(body: CheckBody, request: Request, who: Service) -> dict[str, Any]:
    """May this agent use this scope on this resource now? Answered from the grant view
    (resource services, with their enforcement point key; operators), about agents of the
    caller's tenants only when the tenants file scopes it."""
    scoped(request, who, body.agent_id)
    runtime = runtime_of(request)
    assert runtime.view is not None
    if body.consistency_token is None:  # an in-memory lookup: answered on the event loop
        verdict = check_agent(runtime.view, body.agent_id, body.scope, body.resource)
    else:  # may wait for the view to reach the token: in a thread
        verdict = await run_in_threadpool(check_agent, runtime.view, body.agent_id, body.scope,
                                          body.resource, at_least=body.consistency_token)
    outcome = "allowed" if verdict.allowed else "unavailable" if verdict.unavailable else "denied"
    runtime.metrics.checks.labels(outcome).inc()
    grant = verdict.grant
    return {
        "allowed": verdict.allowed, "unavailable": verdict.unavailable, "reason": verdict.reason,
        # What allows it: a time-boxed grant, or the agent's standing baseline (no expiry).
        "entitlement": "grant" if grant else "baseline" if verdict.baseline else None,
        "grant_id": grant.grant_id if grant else None,
        "expires_at": grant.expires_at.isoformat() if grant else None,
        "remaining_s": round((grant.expires_at - datetime.now(UTC)).total_seconds(), 1)
        if grant else None,
    }


@router.get("/v1/agents/{agent_id}/grants", tags=["agents"])
async def list_grants(agent_id: AgentIdPath, request: Request,
                      _who: AgentOrOperator) -> list[dict[str, Any]]:
    """The agent's active grants (absolute expiry and time left); the agent or an operator."""
    runtime, now = runtime_of(request), datetime.now(UTC)
    assert runtime.store is not None
    try:
        grants: list[GrantIssued] = await runtime.store.active_grants(agent_id, now)
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Redis up?)", kind="unavailable") from exc
    return [
        {**g.model_dump(mode="json"),
         "remaining_s": round((g.expires_at - now).total_seconds(), 1)}
        for g in sorted(grants, key=lambda g: g.expires_at)
    ]


@router.post("/v1/agents/{agent_id}/escalations", tags=["agents"])
def escalate(agent_id: AgentIdPath, body: EscalationBody, request: Request,
             who: AgentItself) -> EscalationDecided | EscalationPending:
    """Ask for elevated scopes as ``agent_id``; returns the decision (reasons, expiry, token),
    or, when the policy asks for approval, the pending notice (approvers, window end)."""
    now = datetime.now(UTC)  # valid while this call waits: never granted once it has answered
    req = EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent_id, requested_at=now,
        valid_until=now + timedelta(seconds=runtime_of(request).settings.decision_timeout_s),
        **body.model_dump(),
    )
    decision: EscalationDecided | EscalationPending = relay(
        request, who, "escalation", req, req.request_id, pending=True)
    return decision


@router.post("/v1/agents/{agent_id}/grants/{grant_id}/renewal", tags=["agents"])
def renew(agent_id: AgentIdPath, grant_id: IdPath, body: RenewalBody, request: Request,
          who: AgentItself) -> RenewalDecided:
    """Renew one of the agent's own grants with fresh evidence: new absolute expiry or why not."""
    req = RenewalRequested(
        request_id=f"renew-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
        requested_at=datetime.now(UTC), **body.model_dump(),
    )
    decision: RenewalDecided = relay(request, who, "renewal", req, req.request_id)
    return decision


@router.post("/v1/agents/{agent_id}/grants/{grant_id}/release", tags=["agents"])
def release(agent_id: AgentIdPath, grant_id: IdPath, body: ReleaseBody, request: Request,
            who: AgentItself) -> ReleaseDecided:
    """Give one of the agent's own grants back early."""
    req = ReleaseRequested(
        request_id=f"release-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
        requested_at=datetime.now(UTC), reason=body.reason,
    )
    decision: ReleaseDecided = relay(request, who, "release", req, req.request_id)
    return decision
