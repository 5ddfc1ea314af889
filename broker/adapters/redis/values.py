"""What the grant store takes and returns, and Redis's time encoding (epoch milliseconds).

Imports broker core, schemas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from broker.grants.decide import AgentState
from schemas.events import EscalationDecided, GrantExpired, GrantIssued
from schemas.events.base import WireModel


def ms(when: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(when.timestamp() * 1000)


def stored(event: WireModel) -> str:
    """The JSON an event is kept as in Redis: only its fields that differ from their defaults
    (the model that reads it back fills them in; a Lua script reads only fields without one)."""
    return event.model_dump_json(exclude_defaults=True)


def from_ms(value: int | str | bytes) -> datetime:
    """Aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


@dataclass(frozen=True)
class Committed:
    """Result of storing a decision: what is now recorded for the request."""

    status: Literal["stored", "existing", "blocked", "fenced"]
    decision: EscalationDecided | None
    grant: GrantIssued | None
    published: bool = False
    blocked_reason: str = ""
    blocked_detail: str = ""


@dataclass(frozen=True)
class DueExpiry:
    """A grant whose expiry passed: announce it (``live``) to its namespaces' topics, then ack."""

    event: GrantExpired
    live: bool
    namespaces: tuple[str, ...] | None
    member: str


@dataclass(frozen=True)
class Fence:
    """Who may write for one input partition: its topic role and this worker's epoch (0: none).

    ``claim`` is the key of the partition's claimed epoch (keyspace.fence; '' for none): a
    commit or a revocation with it is refused once a newer owner claimed the partition, even
    before that owner wrote anything for the agent.
    """

    role: str = "esc"
    epoch: int = 0
    claim: str = ""


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``capacity`` requests per ``per_ms`` milliseconds (0: unlimited)."""

    capacity: int = 0
    per_ms: int = 1000

    def wait_ms(self, bucket: tuple[float, int] | None, now_ms: int) -> int | None:
        """Milliseconds until the bucket (tokens, ts ms) holds a token again; None if it holds one.

        The commit script's arithmetic, read-only: a request that finds the bucket empty is over
        its limit whatever else it asks for (the script would refuse its commit).
        """
        if self.capacity <= 0 or bucket is None:
            return None
        tokens, ts = bucket
        if now_ms > ts:
            tokens = min(self.capacity, tokens + (now_ms - ts) * self.capacity / self.per_ms)
        if tokens >= 1:
            return None
        return math.ceil((1 - tokens) * self.per_ms / self.capacity)


NO_FENCE, NO_RISK_FENCE, UNLIMITED = Fence(), Fence(role="risk"), RateLimit()


@dataclass(frozen=True)
class Snapshot:
    """What one decision reads first, in one round trip; ``now`` is Redis's clock."""

    now: datetime
    state: AgentState
    risk: float
    view_built: bool
    fence_epoch: int | None
    recorded: Committed | None = None  # the request's stored decision, when one was asked for
    bucket: tuple[float, int] | None = None  # the agent's rate-limit bucket (tokens, ts ms)


@dataclass(frozen=True)
class Check:
    """Answer of a store-side check, with the reason."""

    allowed: bool
    reason: str
    grant: GrantIssued | None = None
