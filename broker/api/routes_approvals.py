"""Operator routes for held requests: list, approve, deny. L3. Imports fastapi, broker.

Operators only, each with an assertion signed by their own key. A vote is published on the
approvals topic carrying that assertion, in that operator's name: the worker counts it as that
operator's one vote, so two operators are two votes and no header names anyone.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from broker.adapters.redis.approvals import ApprovalStore
from broker.api.auth import Caller, Operator, OperatorOfAgent, runtime_of, spend
from broker.api.bodies import AgentIdPath, AgentQuery, IdPath, VoteBody
from broker.api.problems import PROBLEMS, Refused
from broker.errors import BrokerError
from broker.sdk.operator.approvals import Approver, Verdict, held_row

router = APIRouter(tags=["operators"], responses=PROBLEMS)


@router.get("/v1/operator/approvals")
async def approvals(request: Request, _who: Operator,
                    agent: AgentQuery = None) -> list[dict[str, Any]]:
    """Held requests: scopes, quorum, votes, window end (absolute) and time left."""
    runtime = runtime_of(request)
    if runtime.store is None:
        raise Refused(503, "the API is not connected to Redis yet", kind="unavailable")
    try:
        held = await ApprovalStore(runtime.store.client).listed()
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Redis up?)", kind="unavailable") from exc
    now = datetime.now(UTC)
    return [held_row(h, now) for h in held if agent in (None, h.pending.event.agent_id)
            and runtime.sees(_who.principal.id, h.pending.event.agent_id)]


def _vote(request: Request, agent_id: str, request_id: str, verdict: Verdict, reason: str,
          who: Caller) -> dict[str, Any]:
    runtime = runtime_of(request)
    spend(request, who)
    try:
        vote = Approver(who.principal.id, runtime.relay(who.assertion.token)).vote(
            request_id, agent_id, verdict, reason)
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Kafka up?)", kind="unavailable") from exc
    return {"vote": vote.model_dump(mode="json"),
            "watch": f"permbroker audit tail --agent {agent_id}"}


@router.post("/v1/operator/approvals/{agent_id}/{request_id}/approve")
def approve(agent_id: AgentIdPath, request_id: IdPath, body: VoteBody, request: Request,
            who: OperatorOfAgent) -> dict[str, Any]:
    """Approve a held request (counts as the calling operator's one vote)."""
    return _vote(request, agent_id, request_id, "approve", body.reason, who)


@router.post("/v1/operator/approvals/{agent_id}/{request_id}/deny")
def deny(agent_id: AgentIdPath, request_id: IdPath, body: VoteBody, request: Request,
         who: OperatorOfAgent) -> dict[str, Any]:
    """Deny a held request (one deny ends it)."""
    return _vote(request, agent_id, request_id, "deny", body.reason, who)
