"""Approvers' SDK: vote on held requests, signed as the approver; list what waits. L2.

Imports broker (adapters, core), schemas. An approver is an operator (its operator key, principal
``operator:<name>``) or a designated verifier agent (its own agent key). A vote is published on
the approvals topic keyed by the requesting agent, so it lands in the request's partition, and
the worker's identity gate checks that the signer is the approver named in the vote.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from broker.adapters.crypto.keystore import AgentKeyStore, load_operator
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis.approvals import ApprovalStore, Held
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.sdk.agent.identity import AgentIdentity
from broker.sdk.operator.client import operator_publisher
from schemas import topics
from schemas.events import ApprovalVoted

Verdict = Literal["approve", "deny"]


class Approver:
    """One approver's votes; each one is signed with the approver's own key."""

    def __init__(self, principal: str, publisher: Publisher) -> None:
        self.principal = principal
        self._publisher = publisher

    @classmethod
    def agent(cls, agent_id: str, kafka: KafkaAccess, *, keys: AgentKeyStore) -> Approver:
        """A verifier agent voting with its agent key (from its key store ``keys``)."""
        identity = AgentIdentity(agent_id, keys)
        return cls(agent_id, Publisher(kafka, source=f"/agents/{agent_id}",
                                       signer=identity.sign))

    @classmethod
    def operator(cls, settings: Settings, kafka: KafkaAccess) -> Approver:
        """This operator, voting with the operator key (``permbroker keys init``)."""
        principal, _key = load_operator(settings.key_path("operator"))
        return cls(principal, operator_publisher(
            kafka, f"/operators/{principal.split(':', 1)[1]}", settings))

    def vote(self, request_id: str, agent_id: str, verdict: Verdict,
             reason: str = "") -> ApprovalVoted:
        """Publish a vote on ``agent_id``'s held request; returns it once Kafka has it."""
        vote = ApprovalVoted(vote_id=f"vote-{uuid.uuid4()}", request_id=request_id,
                             agent_id=agent_id, approver=self.principal, verdict=verdict,
                             reason=reason, voted_at=datetime.now(UTC))
        self._publisher.publish(topics.APPROVALS.name, vote)
        return vote

    def approve(self, request_id: str, agent_id: str, reason: str = "") -> ApprovalVoted:
        """Vote for granting the held request."""
        return self.vote(request_id, agent_id, "approve", reason)

    def deny(self, request_id: str, agent_id: str, reason: str = "") -> ApprovalVoted:
        """Vote against it (one deny ends the request)."""
        return self.vote(request_id, agent_id, "deny", reason)


async def held_requests(settings: Settings) -> list[Held]:
    """Requests waiting for approval (or closed and about to be announced), from Redis."""
    grants = RedisGrantStore.from_url(settings.redis_url, margin_s=settings.record_margin_s)
    try:
        return await ApprovalStore(grants.client, margin_s=settings.record_margin_s).listed()
    finally:
        await grants.aclose()


def held_row(held: Held, now: datetime) -> dict[str, Any]:
    """A held request as JSON: absolute window end and the time left, votes so far."""
    event = held.pending.event
    return {
        "request_id": event.request_id, "agent_id": event.agent_id, "status": held.status,
        "scopes": list(event.scopes), "resources": list(event.resources),
        "duration_s": event.duration_s, "quorum": event.quorum,
        "approvers": list(event.approvers), "votes": held.votes,
        "window_expires_at": event.window_expires_at.isoformat(),
        "window_remaining_s": round(max((event.window_expires_at - now).total_seconds(), 0), 1),
        "tiers": list(event.tiers), "rules": list(event.matched_rules),
        "reason": held.pending.request.reason,
    }
