"""Agent standing: baseline entitlements (standing, revocable everyday access, as the broker
states it) and key-age warnings (rotate before the policy refuses the key).

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import AgentId, EventId, Kid, Scope, UtcDatetime, WireModel


class BaselineEntitlement(WireModel):
    """The whole baseline an agent holds from ``effective_at`` on (``active``), or that it holds
    none (``withdrawn``: suspended, quarantined, decommissioned). Each one replaces the last for
    its agent; one with an older registry revision than one already applied changes nothing.
    It has no expiry: it stands until the broker states the next one (it is not a grant)."""

    entitlement_id: EventId
    agent_id: AgentId
    status: Literal["active", "withdrawn"]
    scopes: tuple[Scope, ...] = ()  # empty when withdrawn; on a namespace topic, its scopes
    agent_class: Annotated[str, StringConstraints(max_length=64)] = ""
    registry_revision: Annotated[int, Field(ge=1)]
    policy_revision: str
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    cause_id: EventId
    effective_at: UtcDatetime
    until: UtcDatetime | None = None  # when the registration lapses unless renewed

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per statement."""
        return self.entitlement_id


class KeyAgeWarning(WireModel):
    """The broker to one agent (on the decisions topic): the key it signs with nears the
    policy's maximum key age and will be refused from ``refused_at``; rotate it now."""

    warning_id: EventId
    agent_id: AgentId
    kid: Kid
    added_at: UtcDatetime
    refused_at: UtcDatetime
    warned_at: UtcDatetime
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per warning."""
        return self.warning_id
