"""Operator routes for held requests: list, approve, deny. L3. Imports fastapi, broker.

Operators only (the operator bearer token). A vote is published on the approvals topic signed
with the API process's operator key, so it counts as that operator principal's one vote; the
``X-Permbroker-Operator`` header names the person in the vote's reason for the audit.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field

from broker.adapters.crypto.keystore import load_operator
from broker.adapters.redis.approvals import ApprovalStore
from broker.api.auth import require_operator
from broker.api.routes_agents import Body, runtime_of
from broker.errors import BrokerError
from broker.sdk.operator.approvals import Approver, Verdict, held_row

router = APIRouter(tags=["operators"])


class VoteBody(Body):
    reason: Annotated[str, Field(max_length=2000)] = ""


@router.get("/v1/operator/approvals", dependencies=[Depends(require_operator)])
async def approvals(request: Request, agent: str | None = None) -> list[dict[str, Any]]:
    """Held requests: scopes, quorum, votes, window end (absolute) and time left."""
    runtime = runtime_of(request)
    if runtime.store is None:
        raise HTTPException(503, "the API is not connected to Redis yet")
    try:
        held = await ApprovalStore(runtime.store.client).listed()
    except BrokerError as exc:
        raise HTTPException(503, f"{exc} (is Redis up?)") from exc
    now = datetime.now(UTC)
    return [held_row(h, now) for h in held if agent in (None, h.pending.event.agent_id)]


def _vote(request: Request, agent_id: str, request_id: str, verdict: Verdict, reason: str,
          operator: str) -> dict[str, Any]:
    runtime = runtime_of(request)
    if runtime.publisher is None:
        raise HTTPException(503, "the API is not connected to Kafka yet")
    try:
        principal, _key = load_operator(runtime.settings.key_path("operator"))
        vote = Approver(principal, runtime.publisher).vote(
            request_id, agent_id, verdict, f"{reason} (via API, by {operator})".strip())
    except BrokerError as exc:
        raise HTTPException(503, f"{exc} (is Kafka up, is there an operator key?)") from exc
    return {"vote": vote.model_dump(mode="json"),
            "watch": f"permbroker audit tail --agent {agent_id}"}


@router.post("/v1/operator/approvals/{agent_id}/{request_id}/approve")
def approve(agent_id: str, request_id: str, body: VoteBody, request: Request,
            operator: Annotated[str, Depends(require_operator)]) -> dict[str, Any]:
    """Approve a held request (the API's operator principal counts once)."""
    return _vote(request, agent_id, request_id, "approve", body.reason, operator)


@router.post("/v1/operator/approvals/{agent_id}/{request_id}/deny")
def deny(agent_id: str, request_id: str, body: VoteBody, request: Request,
         operator: Annotated[str, Depends(require_operator)]) -> dict[str, Any]:
    """Deny a held request (one deny ends it)."""
    return _vote(request, agent_id, request_id, "deny", body.reason, operator)
