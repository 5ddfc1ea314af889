"""Checks that enforcement points report (not budgets). Imports pydantic, schemas.events.base."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from schemas.events.base import AgentId, EventId, Scope, UtcDatetime, WireModel

MAX_CHECKS_PER_REPORT = 1000


class CheckPerformed(WireModel):
    """One check an enforcement point answered: who asked for what, where, and the answer."""

    scope: Scope
    resource: Annotated[str, StringConstraints(max_length=256)] = ""
    allowed: bool
    grant_id: EventId | None = None  # the grant that allowed it
    reason: Annotated[str, StringConstraints(max_length=512)] = ""
    checked_at: UtcDatetime


class ChecksReported(WireModel):
    """A batch of one agent's checks at one enforcement point (``service``), signed by it.

    ``dropped`` counts the checks the point could not keep since its previous report (its
    memory is bounded and a check never waits for a report): the audit says how many are missing.
    """

    report_id: EventId
    agent_id: AgentId
    service: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    checks: Annotated[tuple[CheckPerformed, ...], Field(max_length=MAX_CHECKS_PER_REPORT)]
    dropped: Annotated[int, Field(ge=0)] = 0
    reported_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per report."""
        return self.report_id
