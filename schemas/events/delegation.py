"""Delegation: an agent hands a narrower part of one of its grants to another agent.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import (
    MAX_REQUESTED_DURATION_S,
    MAX_RESOURCES_PER_REQUEST,
    MAX_SCOPES_PER_REQUEST,
    AgentId,
    EventId,
    Resource,
    Scope,
    UtcDatetime,
    WireModel,
)
from schemas.events.escalations import ScopeDenial


class DelegationRequested(WireModel):
    """An agent (``agent_id``, the delegator) asks to delegate part of its grant
    ``parent_grant_id`` to ``delegate_id``: scopes and resources within the parent's, for at
    most ``duration_s`` (never past the parent's expiry); policy decides."""

    request_id: EventId
    agent_id: AgentId
    parent_grant_id: EventId
    delegate_id: AgentId
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=MAX_SCOPES_PER_REQUEST)]
    resources: Annotated[tuple[Resource, ...], Field(max_length=MAX_RESOURCES_PER_REQUEST)] = ()
    duration_s: Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class DelegationDecided(WireModel):
    """The answer to one delegation request (keyed by the delegator, who asked): the child
    grant with its absolute expiry and what was narrowed, or why not (naming the rule)."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    delegate_id: AgentId
    parent_grant_id: EventId
    outcome: Literal["granted", "denied"]
    grant_id: EventId | None = None
    granted_scopes: tuple[Scope, ...] = ()
    resources: tuple[Resource, ...] = ()
    expires_at: UtcDatetime | None = None
    clamped_by: str | None = None
    denied: tuple[ScopeDenial, ...] = ()
    matched_rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime
    consistency_token: str | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.decision_id
