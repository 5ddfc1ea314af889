"""The grant lifecycle: issued, renewed, used, expiring, expired, released, revoked.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import AgentId, EventId, Resource, Scope, UtcDatetime, WireModel


class GrantIssued(WireModel):
    """A time-boxed, narrow grant became active."""

    grant_id: EventId
    agent_id: AgentId
    request_id: EventId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...]
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    policy_revision: str
    rules: tuple[str, ...]
    model_version: str = ""
    model_digest: str = ""
    kid: str = ""  # the agent key that signed the request ("" when unsigned events were allowed)
    # At most this many uses per scope over the grant's life (from the granting rule's budgets).
    budgets: dict[Scope, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    case_id: str | None = None  # the case/incident the request named (revocable by it)
    # A delegated grant: the grant it was carved from (it ends when that one ends), and the
    # delegators, nearest first (the parent's holder, then whoever delegated to it, ...).
    parent_grant_id: EventId | None = None
    delegators: tuple[AgentId, ...] = ()
    # The holder's tenant, from its registered profile (never from the request): views of one
    # tenant apply only its grants.
    tenant: Annotated[str, StringConstraints(max_length=64)] = "default"

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one grant per request)."""
        return self.request_id


class GrantRevoked(WireModel):
    """A grant was revoked before its expiry; it never comes back."""

    grant_id: EventId
    agent_id: AgentId
    revoked_at: UtcDatetime
    expires_at: UtcDatetime
    reason: str
    rule: str
    cause_event_id: EventId
    quarantined_until: UtcDatetime | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:revoked"


class AgentRevoked(WireModel):
    """Every grant of an agent was revoked (and it may be quarantined); one per revoking event."""

    agent_id: AgentId
    revoked_at: UtcDatetime
    reason: str
    rule: str
    cause_event_id: EventId
    grant_ids: tuple[EventId, ...] = ()
    quarantined_until: UtcDatetime | None = None
    markers_until: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per revoking event."""
        return f"{self.agent_id}:revoked:{self.cause_event_id}"


class GrantExpired(WireModel):
    """A grant reached its absolute expiry."""

    grant_id: EventId
    agent_id: AgentId
    expires_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:expired"


class GrantReleased(WireModel):
    """The agent gave a grant back early."""

    grant_id: EventId
    agent_id: AgentId
    released_at: UtcDatetime
    reason: str = ""

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:released"


class GrantExpiring(WireModel):
    """A grant reaches its absolute expiry soon: renew it (policy permitting) or let it lapse."""

    grant_id: EventId
    agent_id: AgentId
    expires_at: UtcDatetime
    warned_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per expiry it warns of."""
        return f"{self.grant_id}:expiring:{int(self.expires_at.timestamp() * 1000)}"


class GrantRenewed(WireModel):
    """A live grant got a later absolute expiry through a policy-evaluated renewal."""

    grant_id: EventId
    agent_id: AgentId
    request_id: EventId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...]
    renewed_at: UtcDatetime
    previous_expires_at: UtcDatetime
    expires_at: UtcDatetime
    policy_revision: str
    rules: tuple[str, ...]

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per renewal request."""
        return f"{self.grant_id}:renewed:{self.request_id}"


class GrantUsed(WireModel):
    """A resource service counted (or refused) one use of a budgeted scope of a grant."""

    use_id: EventId  # the service's id of the use: a retried report never counts twice
    agent_id: AgentId
    grant_id: EventId
    scope: Scope
    resource: Annotated[str, StringConstraints(max_length=256)] = ""
    service: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    outcome: Literal["consumed", "refused"]
    used: Annotated[int, Field(ge=0)]  # uses counted so far, this one included when consumed
    limit: Annotated[int, Field(ge=1)]
    used_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per use and outcome."""
        return f"{self.grant_id}:used:{self.use_id}:{self.outcome}"


GrantLifecycle = GrantIssued | GrantRevoked | GrantExpired | GrantReleased | AgentRevoked


class RoutingAnnounced(WireModel):
    """A worker names the scope namespaces it routes to their own grant topics, and the tenants
    whose own grant topics it writes. Written to every namespace grant topic (those it routes,
    and existing ones it does not) and every tenant's grant topic, at start and periodically,
    so a view of such a topic knows whether any worker writes it."""

    worker: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    namespaces: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")], ...]
    announced_at: UtcDatetime
    # The policy's degraded mode by namespace: seconds of grace a view of that namespace keeps
    # already delivered grants while it cannot prove freshness (absent: fail closed).
    grace_s: dict[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
                  Annotated[int, Field(ge=1, le=3600)]] = Field(default_factory=dict)
    # The tenants that have grant topics of their own, which this worker writes
    # (``permbroker.tenant.<tenant>.grants`` and its namespace topics); absent: not stated. A
    # view of the topics of a tenant not named denies: their revocations go elsewhere.
    tenants: tuple[Annotated[str, StringConstraints(min_length=1, max_length=64)], ...] | None \
        = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per announcement."""
        return f"routing:{self.worker}:{self.announced_at.isoformat()}"
