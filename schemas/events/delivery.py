"""Enforcement points: revocation acknowledgements and status reports.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints

from schemas.events.base import AGENT_ID_PATTERN, AgentId, EventId, UtcDatetime, WireModel

EnforcementPoint = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class RevocationAcknowledged(WireModel):
    """An enforcement point applied a revocation: which one, where it read it, and when."""

    ack_id: EventId
    enforcement_point: EnforcementPoint
    agent_id: AgentId
    cause_event_id: EventId
    grant_ids: tuple[EventId, ...] = ()
    revoked_at: UtcDatetime
    applied_at: UtcDatetime
    topic: str
    partition: int
    offset: int
    # Applied while the view was catching up at its start (not a live propagation time).
    replayed: bool = False

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.ack_id


class EnforcementPointStatus(WireModel):
    """An enforcement point (grant view) says it exists and how current it is."""

    enforcement_point: EnforcementPoint
    topic: str
    ready: bool
    staleness_s: float | None = None
    lag: int = 0
    started_at: UtcDatetime
    reported_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per report."""
        stamp = int(self.reported_at.timestamp() * 1000)
        return f"{self.enforcement_point}:status:{stamp}"
