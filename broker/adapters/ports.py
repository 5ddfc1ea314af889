"""Ports of the worker: the grant store and the publisher it depends on. Imports broker, schemas.

``streams`` is typed on these Protocols, not on the Redis or Kafka classes. Each has an
in-memory twin in ``tests/support/twins.py`` held to the real adapter by a contract test
(``tests/contract/test_grant_store.py``). The store's value types (snapshots,
commits, fences, rate limits, due expiries) are re-exported here: callers of the port import
them from the port.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from broker.adapters.kafka.codec import Encoded
from broker.adapters.redis.store import (
    NO_FENCE,
    NO_RISK_FENCE,
    UNLIMITED,
    Committed,
    DueExpiry,
    Fence,
    RateLimit,
    Snapshot,
)
from broker.delivery.consistency import Position
from broker.grants.decide import AgentState, Outcome
from broker.grants.revocation import RevocationPlan
from schemas.events import EscalationDecided, GrantIssued

__all__ = [
    "NO_FENCE",
    "NO_RISK_FENCE",
    "UNLIMITED",
    "Committed",
    "DueExpiry",
    "Fence",
    "GrantStore",
    "Publisher",
    "RateLimit",
    "Snapshot",
]


class GrantStore(Protocol):
    """The view of active grants, revocation markers, fences and decision records.

    Every write happens at an absolute expiry computed by the broker; a decision is committed
    once per decision id (a redelivery finds it); a write carrying an older fencing epoch than
    the agent's newest writer is refused; nothing is decided until the view was built (its
    epoch). Every method raises ``StoreUnavailable`` when the store cannot answer.
    """

    async def now(self) -> datetime:
        """The store's clock: the one that expires every entry."""

    async def check_config(self) -> None:
        """Refuse a store that may drop entries before their expiry (``StoreMisconfigured``)."""

    async def view_epoch(self) -> datetime | None:
        """When the view was last built from the log, or None (then nothing is allowed)."""

    async def mark_built(self, now: datetime) -> None:
        """Record that the view now reflects the log."""

    async def baselines_stated(self) -> str | None:
        """The fingerprint of the statements a worker last stated for every agent, while it
        holds (``mark_baselines_stated``)."""

    async def mark_baselines_stated(self, fingerprint: str, ttl_s: int) -> None:
        """Record that every agent's baseline was stated under ``fingerprint``, for ``ttl_s``."""

    async def snapshot(
        self, agent_id: str, fence_key: str | None = None, request_id: str | None = None
    ) -> Snapshot:
        """Clock, agent state, live risk, view state, a partition's fence, a request's record."""

    async def agent_state(self, agent_id: str) -> AgentState:
        """Quarantine and last revocation of an agent."""

    async def live_risk(self, agent_id: str) -> float:
        """The highest recent non-revoking risk severity about the agent (0 when none)."""

    async def fence_epoch(self, fence_key: str) -> int:
        """The newest claimed epoch of an input partition (0 when none)."""

    async def claim(self, fence_key: str) -> int:
        """Become the newest owner of an input partition; the epoch to write with."""

    async def note_risk(self, agent_id: str, severity: float, until: datetime) -> float:
        """Remember a risk severity until ``until``; returns the live risk."""

    async def commit(
        self, outcome: Outcome, *, received_at: datetime, now: datetime, max_grant_s: int,
        fence: Fence = NO_FENCE, rate: RateLimit = UNLIMITED,
    ) -> Committed:
        """Store a decision (and its grant) once; a redelivery gets the recorded one back."""

    async def recorded(self, agent_id: str, request_id: str) -> Committed | None:
        """The decision stored for a request, or None."""

    async def mark_published(
        self, decision: EscalationDecided, *, received_at: datetime, max_grant_s: int
    ) -> None:
        """Remember that a decision reached Kafka (a later delivery is a duplicate)."""

    async def revoke_all(
        self, plan: RevocationPlan, fence: Fence = NO_RISK_FENCE
    ) -> tuple[GrantIssued, ...] | None:
        """Remove every grant of the agent, leave markers; None when fenced. Idempotent."""

    async def active_grants(self, agent_id: str, now: datetime) -> list[GrantIssued]:
        """Live grants of one agent."""

    async def due_expiries(self, now: datetime, limit: int = 500) -> list[DueExpiry]:
        """Grants whose expiry passed (``live``: not revoked or released, to announce)."""

    async def ack_expiries(self, done: Sequence[DueExpiry]) -> None:
        """Forget announced (or skipped) expiries."""


class Publisher(Protocol):
    """Writes encoded messages to Kafka and returns once Kafka acknowledged every one.

    Returns where each message landed (None from publishers that cannot tell); raises
    ``BusError`` when Kafka did not acknowledge.
    """

    async def publish(self, topic: str, messages: Sequence[Encoded]) -> Sequence[Position] | None:
        """Send messages to one topic."""

    async def publish_many(
        self, messages: Sequence[tuple[str, Encoded]]
    ) -> Sequence[Position] | None:
        """Send ``(topic, message)`` pairs across topics in one go."""
