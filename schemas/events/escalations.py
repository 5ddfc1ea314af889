"""Escalations: an agent's request, the broker's answer, requests held for approval, votes.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import (
    AGENT_ID_PATTERN,
    MAX_REQUESTED_DURATION_S,
    MAX_RESOURCES_PER_REQUEST,
    MAX_SCOPES_PER_REQUEST,
    AgentId,
    EventId,
    Resource,
    Scope,
    Signals,
    Unit,
    UtcDatetime,
    WireModel,
)


class EscalationRequested(WireModel):
    """An agent asks for elevated scopes, narrowed to resources, for a duration."""

    request_id: EventId
    agent_id: AgentId
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=MAX_SCOPES_PER_REQUEST)]
    resources: Annotated[tuple[Resource, ...], Field(max_length=MAX_RESOURCES_PER_REQUEST)] = ()
    duration_s: Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    case_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    confidence: Unit
    risk_score: Unit = 0.0
    data_sensitivity: Literal["public", "internal", "confidential", "restricted"] = "internal"
    signals: Signals = Field(default_factory=dict)
    model_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    requested_at: UtcDatetime
    valid_until: UtcDatetime | None = Field(None, description=(
        "The requester's deadline (its client stops waiting then): a request the broker would "
        "decide after it is denied with the rule request-expired. Absent: no deadline."))

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class ScopeDenial(WireModel):
    """One requested scope that was not granted, and the rule (or ceiling) that said no."""

    scope: str
    rule: str
    reason: str


class EscalationDecided(WireModel):
    """The broker's answer to one escalation request."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    outcome: Literal["granted", "denied"]
    granted_scopes: tuple[Scope, ...] = ()
    resources: tuple[Resource, ...] = ()
    denied: tuple[ScopeDenial, ...] = ()
    grant_id: EventId | None = None
    expires_at: UtcDatetime | None = None
    duration_s: int = 0
    clamped_by: str | None = None
    matched_rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime
    # Partition and offsets of the grant's events: ask a view ``allows(..., at_least=token)``.
    consistency_token: str | None = None
    tiers: tuple[str, ...] = ()  # graduated grants: "<rule>/<tier>" of each tier that matched
    approvals: tuple[str, ...] = ()  # approvers whose approval granted it (approval rules)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one decision per request)."""
        return self.request_id


# An approver: an operator (``operator:<name>``) or a designated verifier agent (its agent id).
Approver = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class EscalationPending(WireModel):
    """A request the policy will grant only once enough approvers agree; no grant exists yet.

    ``window_expires_at`` ends the approval window (separate from the grant's lifetime): the
    grant's clock starts at the deciding approval. The final EscalationDecided follows.
    """

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...] = ()
    duration_s: int
    quorum: Annotated[int, Field(ge=1)]
    approvers: tuple[Approver, ...]
    window_expires_at: UtcDatetime
    matched_rules: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per held request."""
        return f"{self.request_id}:pending"


class ApprovalVoted(WireModel):
    """One approver approves or denies a pending request; signed by the approver itself."""

    vote_id: EventId
    request_id: EventId
    agent_id: AgentId  # the requesting agent (the partition key: the request's partition)
    approver: Approver
    verdict: Literal["approve", "deny"]
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    voted_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.vote_id
