"""An agent's requests about one of its own grants (renew, release) and their answers.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import (
    MAX_REQUESTED_DURATION_S,
    AgentId,
    EventId,
    Signals,
    Unit,
    UtcDatetime,
    WireModel,
)


class RenewalRequested(WireModel):
    """An agent asks to extend one of its own grants, with fresh evidence; policy decides."""

    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    duration_s: Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    confidence: Unit
    risk_score: Unit = 0.0
    signals: Signals = Field(default_factory=dict)
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class RenewalDecided(WireModel):
    """The answer to one renewal: the new absolute expiry, or why not (naming the rule)."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    outcome: Literal["renewed", "denied"]
    expires_at: UtcDatetime | None = None
    previous_expires_at: UtcDatetime | None = None
    total_duration_s: int = 0
    max_total_duration_s: int | None = None
    rule: str | None = None
    reasons: tuple[str, ...] = ()
    matched_rules: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime
    consistency_token: str | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one answer per request)."""
        return self.request_id


class ReleaseRequested(WireModel):
    """An agent gives one of its own grants back before it expires."""

    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class ReleaseDecided(WireModel):
    """The answer to one release request."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    outcome: Literal["released", "denied"]
    reasons: tuple[str, ...] = ()
    decided_at: UtcDatetime
    consistency_token: str | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one answer per request)."""
        return self.request_id
