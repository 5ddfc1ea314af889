"""In-memory twins of the worker's ports (broker/adapters/ports.py). Imports broker, schemas.

``MemoryGrantStore`` keeps the Redis grant store's key layout (``broker.adapters.redis.keyspace``)
and value formats in a dict with absolute expiries judged by its own clock, and does what each
Lua script does, step by step, in the same order. ``tests/contract/test_grant_store.py`` runs
the same cases against it and against real Redis. ``MemoryBus`` records what the worker
publishes, per topic, with offsets; it can be told to fail.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.adapters.kafka import codec
from broker.adapters.kafka.codec import Encoded
from broker.adapters.ports import (
    NO_FENCE,
    NO_RISK_FENCE,
    UNLIMITED,
    Committed,
    DueExpiry,
    Fence,
    RateLimit,
    Snapshot,
)
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import records
from broker.delivery.consistency import Position
from broker.errors import BusError, StoreUnavailable
from broker.grants.decide import AgentState, Outcome, derive_id
from broker.grants.revocation import RevocationPlan
from schemas.events import EscalationDecided, GrantExpired, GrantIssued, WireModel

Clock = Callable[[], datetime]


def ms(when: datetime) -> int:
    """Epoch milliseconds, as the Redis store writes them."""
    return int(when.timestamp() * 1000)


def from_ms(value: int | str) -> datetime:
    """Aware UTC datetime from epoch milliseconds."""
    return datetime.fromtimestamp(int(value) / 1000, tz=UTC)


# The twin keeps the expiry index in one zset (the real store shards it: same answers).
_EXPIRY = f"{keys.PREFIX}:expiry"


@dataclass
class _Entry:
    value: Any
    until_ms: int | None  # absolute expiry (PXAT); None: no expiry


class MemoryGrantStore:
    """The grant store port in memory, with Redis's semantics (see the module docstring)."""

    def __init__(self, *, clock: Clock | None = None, margin_s: int = 3600,
                 warn_before_s: float = 30.0, view_built_at: datetime | None = None) -> None:
        self._clock = clock or (lambda: datetime.now(UTC))
        self._margin = timedelta(seconds=margin_s)
        self._warn_before = warn_before_s
        self._kv: dict[str, _Entry] = {}
        self.down = False  # True: every call raises StoreUnavailable (Redis unreachable)
        if view_built_at is not None:  # as if rebuilt from Kafka at that instant
            self._set(keys.VIEW_EPOCH, ms(view_built_at))

    # --- a tiny key-value store with absolute expiries -----------------------------------

    def _up(self) -> int:
        if self.down:
            raise StoreUnavailable("Redis did not answer: twin is down")
        return ms(self._clock())

    def _get(self, key: str) -> Any:
        entry = self._kv.get(key)
        if entry is not None and entry.until_ms is not None and entry.until_ms <= ms(self._clock()):
            del self._kv[key]
            return None
        return entry.value if entry is not None else None

    def _set(self, key: str, value: Any, pxat: int | None = None) -> None:
        if pxat is not None and pxat <= ms(self._clock()):
            self._kv.pop(key, None)  # written already expired: gone at once, as in Redis
            return
        self._kv[key] = _Entry(value, pxat)

    def _pttl(self, key: str) -> int:
        if self._get(key) is None:
            return -2
        until = self._kv[key].until_ms
        return -1 if until is None else until - ms(self._clock())

    def _zadd(self, key: str, member: str, score: int) -> None:
        zset = self._get(key)
        if zset is None:
            zset = {}
            self._kv[key] = _Entry(zset, None)
        zset[member] = score

    def _expire_max(self, key: str, pxat: int) -> None:
        """PEXPIREAT NX then GT (or PTTL < 0 then GT): set when none, else only extend."""
        entry = self._kv.get(key)
        if entry is not None:
            entry.until_ms = pxat if entry.until_ms is None else max(entry.until_ms, pxat)

    def _zrange_after(self, key: str, floor_ms: int) -> list[str]:
        """ZRANGEBYSCORE key (floor +inf, in score then member order."""
        zset: dict[str, int] = self._get(key) or {}
        return [m for m, s in sorted(zset.items(), key=lambda i: (i[1], i[0])) if s > floor_ms]

    # --- the port --------------------------------------------------------------------------

    async def now(self) -> datetime:
        """The twin's clock."""
        self._up()
        return self._clock()

    async def check_config(self) -> None:
        """A dict never evicts."""
        self._up()

    async def view_epoch(self) -> datetime | None:
        """When the view was built, or None."""
        self._up()
        raw = self._get(keys.VIEW_EPOCH)
        return from_ms(raw) if raw else None

    async def mark_built(self, now: datetime) -> None:
        """Record that the view reflects the log."""
        self._up()
        self._set(keys.VIEW_EPOCH, ms(now))

    async def baselines_stated(self) -> str | None:
        """The fingerprint last stated, while it holds."""
        self._up()
        stated: str | None = self._get(keys.BASELINES_STATED)
        return stated

    async def mark_baselines_stated(self, fingerprint: str, ttl_s: int) -> None:
        """Record the fingerprint for ``ttl_s``."""
        self._set(keys.BASELINES_STATED, fingerprint, self._up() + ttl_s * 1000)

    async def snapshot(
        self, agent_id: str, fence_key: str | None = None, request_id: str | None = None
    ) -> Snapshot:
        """Clock, agent state, live risk, view state, fence, and a request's record."""
        self._up()
        rule = self._get(keys.quarantine(agent_id))
        pttl = self._pttl(keys.quarantine(agent_id))
        pxat = ms(self._clock()) + pttl if pttl > 0 else -1
        revoked = self._get(keys.revoked(agent_id))
        risk = self._get(keys.risk(agent_id))
        return Snapshot(
            now=self._clock(),
            state=AgentState(
                quarantined_until=from_ms(pxat) if rule and pxat > 0 else None,
                quarantine_rule=rule or "",
                revoked_at=from_ms(revoked) if revoked else None,
            ),
            risk=float(risk) if risk else 0.0,
            view_built=self._get(keys.VIEW_EPOCH) is not None,
            fence_epoch=int(self._get(fence_key) or 0) if fence_key is not None else None,
            recorded=self._record_of(agent_id, request_id) if request_id is not None else None,
            bucket=self._bucket(agent_id),
        )

    def _bucket(self, agent_id: str) -> tuple[float, int] | None:
        """The agent's token bucket as the snapshot reads it (tokens, ts ms), or None."""
        bucket: dict[str, str] = self._get(keys.rate(agent_id)) or {}
        return (float(bucket["t"]), int(bucket["ts"])) if bucket else None

    async def agent_state(self, agent_id: str) -> AgentState:
        """Quarantine and last revocation of an agent."""
        return (await self.snapshot(agent_id)).state

    async def live_risk(self, agent_id: str) -> float:
        """The highest recent risk severity (0 when none)."""
        return (await self.snapshot(agent_id)).risk

    async def fence_epoch(self, fence_key: str) -> int:
        """The newest claimed epoch of a partition (0 when none)."""
        self._up()
        return int(self._get(fence_key) or 0)

    async def claim(self, fence_key: str) -> int:
        """CLAIM: above every earlier epoch and never below the clock in microseconds."""
        self._up()
        now_us = int(self._clock().timestamp() * 1_000_000)
        new = max(int(self._get(fence_key) or 0) + 1, now_us)
        self._set(fence_key, new)
        return new

    async def note_risk(self, agent_id: str, severity: float, until: datetime) -> float:
        """NOTE_RISK: keep the highest recent severity until ``until``."""
        self._up()
        key = keys.risk(agent_id)
        current = self._get(key)
        if current is None or float(current) < severity:
            self._set(key, repr(severity), ms(until))
        raw = self._get(key)
        return float(raw) if raw is not None else 0.0

    async def commit(
        self, outcome: Outcome, *, received_at: datetime, now: datetime, max_grant_s: int,
        fence: Fence = NO_FENCE, rate: RateLimit = UNLIMITED,
    ) -> Committed:
        """COMMIT: fence, recorded decision, view, grant checks, rate limit, then store."""
        self._up()
        d, g = outcome.decision, outcome.grant
        agent, gid = d.agent_id, (g.grant_id if g else "")
        expires = g.expires_at if g else received_at
        until = self._record_until(expires, received_at, max_grant_s)
        if g is not None:  # the expiry index entry shares the commit's pipeline
            self._index_expiry(g, until)
        claimed = int(self._get(fence.claim) or 0) if fence.epoch > 0 and fence.claim else 0
        if claimed > fence.epoch:  # a newer owner claimed the partition
            return Committed("fenced", None, None, False, str(claimed), "")
        if (fenced := self._fence(agent, fence, ms(until))) is not None:
            return Committed("fenced", None, None, False, fenced, "")
        existing = self._get(keys.decision(agent, d.request_id))
        if existing is not None:
            found = self._recorded(existing, self._get(keys.grant(agent, gid)),
                                   self._get(keys.published(agent, d.request_id)) is not None)
            assert found is not None
            return found
        blocked = self._blocked(agent, g, expires, received_at, now) or self._take(agent, rate, now)
        if blocked is not None:
            return Committed("blocked", None, None, False, *blocked)
        if g is not None:
            self._store_grant(g, now, until)
        self._set(keys.decision(agent, d.request_id), records.pack(d.model_dump_json()), ms(until))
        return Committed("stored", d, g, False)

    def _fence(self, agent: str, fence: Fence, until_ms: int) -> str | None:
        """The newer owner's epoch when ``fence`` is stale; records ours when it is newer."""
        if fence.epoch <= 0:
            return None
        owner = int(self._get(keys.owner(agent, fence.role)) or 0)
        if owner > fence.epoch:
            return str(owner)
        if owner < fence.epoch:
            self._set(keys.owner(agent, fence.role), fence.epoch, until_ms)
        return None

    def _blocked(self, agent: str, g: GrantIssued | None, expires: datetime,
                 received_at: datetime, now: datetime) -> tuple[str, str] | None:
        if self._get(keys.VIEW_EPOCH) is None:
            return "view", ""
        if g is None:
            return None
        quarantine, revoked = self._get(keys.quarantine(agent)), self._get(keys.revoked(agent))
        if quarantine:
            return "quarantine", quarantine
        if revoked and int(revoked) >= ms(received_at):
            return "revoked", str(revoked)
        if ms(expires) <= ms(now):
            return "stale", str(ms(expires))
        return None

    def _take(self, agent: str, rate: RateLimit, now: datetime) -> tuple[str, str] | None:
        """The rate limit's token bucket: take one, or say how long until one frees up."""
        cap = rate.capacity
        if cap <= 0:
            return None
        per, now_ms = rate.per_ms, ms(now)
        bucket: dict[str, str] = self._get(keys.rate(agent)) or {}
        tokens = float(bucket["t"]) if "t" in bucket else float(cap)
        ts = int(bucket["ts"]) if "ts" in bucket else now_ms
        if now_ms > ts:
            tokens, ts = min(cap, tokens + (now_ms - ts) * cap / per), now_ms
        if tokens < 1:
            return "rate", f"{math.ceil((1 - tokens) * per / cap):d}"
        self._set(keys.rate(agent), {"t": f"{tokens - 1:.6f}", "ts": f"{ts:d}"}, ts + per)
        return None

    def _store_grant(self, g: GrantIssued, now: datetime, until: datetime) -> None:
        agent, expires_ms = g.agent_id, ms(g.expires_at)
        self._set(keys.grant(agent, g.grant_id), g.model_dump_json(), expires_ms)
        self._set(keys.life(agent, g.grant_id), str(expires_ms), ms(until))
        index: dict[str, int] = self._get(keys.index(agent)) or {}
        for member in [m for m, score in index.items() if score <= ms(now)]:
            del index[member]
        self._zadd(keys.index(agent), g.grant_id, expires_ms)
        self._expire_max(keys.index(agent), ms(until))

    def _index_expiry(self, grant: GrantIssued, life_until: datetime) -> None:
        member = keys.expiry_member(grant.agent_id, grant.grant_id, grant.scopes)
        life = (grant.expires_at - grant.issued_at).total_seconds()
        warn_at = grant.expires_at - timedelta(seconds=max(min(self._warn_before, life / 2), 0))
        self._zadd(_EXPIRY, member, ms(warn_at))
        self._expire_max(_EXPIRY, ms(life_until))

    def _record_until(self, expires: datetime, received_at: datetime, max_grant_s: int) -> datetime:
        return max(expires, received_at + timedelta(seconds=max_grant_s)) + self._margin

    def _record_of(self, agent_id: str, request_id: str) -> Committed | None:
        return self._recorded(
            self._get(keys.decision(agent_id, request_id)),
            self._get(keys.grant(agent_id, derive_id("grant", request_id, agent_id))),
            self._get(keys.published(agent_id, request_id)) is not None,
        )

    @staticmethod
    def _recorded(raw: bytes | None, grant_raw: str | None, legacy: bool) -> Committed | None:
        if raw is None:
            return None
        payload, published = records.unpack(raw)
        decision = EscalationDecided.model_validate_json(payload)
        grant = GrantIssued.model_validate_json(grant_raw) if grant_raw else None
        if grant is not None and grant.grant_id != decision.grant_id:
            grant = None
        return Committed("existing", decision, grant, published if published is not None
                         else legacy)

    async def recorded(self, agent_id: str, request_id: str) -> Committed | None:
        """The decision stored for a request, or None."""
        self._up()
        return self._record_of(agent_id, request_id)

    async def mark_published(
        self, decision: EscalationDecided, *, received_at: datetime, max_grant_s: int
    ) -> None:
        """MARK_PUBLISHED: flip the record's first byte, keeping its expiry."""
        self._up()
        entry = self._kv.get(keys.decision(decision.agent_id, decision.request_id))
        if self._get(keys.decision(decision.agent_id, decision.request_id)) is None:
            return
        assert entry is not None
        if entry.value[:1] == records.UNPUBLISHED:
            entry.value = records.PUBLISHED + entry.value[1:]

    async def revoke_all(
        self, plan: RevocationPlan, fence: Fence = NO_RISK_FENCE
    ) -> tuple[GrantIssued, ...] | None:
        """REVOKE_ALL: fence (the partition's claim, the agent's owner), the recorded revocation,
        else remove grants and leave markers."""
        self._up()
        a = plan.agent_id
        record_ms = ms(plan.marker_until + self._margin)
        claimed = int(self._get(fence.claim) or 0) if fence.epoch > 0 and fence.claim else 0
        if claimed > fence.epoch or self._fence(a, fence, record_ms) is not None:
            return None
        recorded = self._get(keys.revocation(a, plan.cause_id))
        if recorded is None:
            removed = self._remove_grants(a, ms(plan.revoked_at))
            self._leave_markers(plan)
            recorded = "[" + ",".join(removed) + "]"
            self._set(keys.revocation(a, plan.cause_id), recorded, record_ms)
        return tuple(GrantIssued.model_validate(item) for item in json.loads(recorded))

    def _remove_grants(self, agent: str, after_ms: int) -> list[str]:
        removed = []
        for gid in self._zrange_after(keys.index(agent), after_ms):
            grant = self._get(keys.grant(agent, gid))
            if grant is not None:
                removed.append(grant)
                self._kv.pop(keys.grant(agent, gid), None)
            self._kv.pop(keys.life(agent, gid), None)
        self._kv.pop(keys.index(agent), None)
        return removed

    def _leave_markers(self, plan: RevocationPlan) -> None:
        a, revoked_ms = plan.agent_id, ms(plan.revoked_at)
        quarantine_ms = ms(plan.quarantine_until) if plan.quarantine_until else 0
        blocked = max(revoked_ms, quarantine_ms)
        previous = self._get(keys.revoked(a))
        if previous is None or int(previous) < blocked:
            self._set(keys.revoked(a), f"{blocked:d}", ms(plan.marker_until))
        if quarantine_ms > 0:
            pttl = self._pttl(keys.quarantine(a))
            current = revoked_ms + pttl if pttl > 0 else 0
            if quarantine_ms > current:
                self._set(keys.quarantine(a), plan.rule, quarantine_ms)

    async def active_grants(self, agent_id: str, now: datetime) -> list[GrantIssued]:
        """Live grants of one agent (its index, then its grants)."""
        self._up()
        found = (self._get(keys.grant(agent_id, gid))
                 for gid in self._zrange_after(keys.index(agent_id), ms(now)))
        return [GrantIssued.model_validate_json(raw) for raw in found if raw is not None]

    async def due_expiries(self, now: datetime, limit: int = 500) -> list[DueExpiry]:
        """Grants whose expiry passed; one that lives on past ``now`` is left alone."""
        self._up()
        zset: dict[str, int] = self._get(_EXPIRY) or {}
        due = sorted(((m, s) for m, s in zset.items() if s <= ms(now)),
                     key=lambda i: (i[1], i[0]))[:limit]
        out = []
        for member, score in due:
            agent, gid, namespaces = keys.parse_member(member)
            current = self._get(keys.life(agent, gid))
            if current is not None and int(current) > ms(now):
                continue
            expires = int(current) if current is not None else score
            event = GrantExpired(grant_id=gid, agent_id=agent, expires_at=from_ms(expires))
            out.append(DueExpiry(event, current is not None, namespaces, member))
        return out

    async def ack_expiries(self, done: Sequence[DueExpiry]) -> None:
        """Forget announced (or skipped) expiries."""
        self._up()
        zset: dict[str, int] = self._get(_EXPIRY) or {}
        for d in done:
            self._kv.pop(keys.life(d.event.agent_id, d.event.grant_id), None)
            zset.pop(d.member, None)


class MemoryBus:
    """The publisher port in memory: every message kept per topic, in order, with an offset."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Encoded]] = {}
        self._failures: dict[str, int] = {}
        # Awaited before each write (a topic at a time): lets a test act at that very moment.
        self.before_write: Callable[[str], Awaitable[None]] | None = None

    def fail(self, topic: str, times: int = 1) -> None:
        """The next ``times`` writes to ``topic`` raise BusError (Kafka did not acknowledge)."""
        self._failures[topic] = times

    async def publish(self, topic: str, messages: Sequence[Encoded]) -> list[Position]:
        """Keep the messages; where each landed."""
        return await self.publish_many([(topic, m) for m in messages])

    async def publish_many(self, messages: Sequence[tuple[str, Encoded]]) -> list[Position]:
        """Keep (topic, message) pairs; BusError (nothing kept) if a topic is failing."""
        for topic in dict.fromkeys(t for t, _m in messages):
            if self.before_write is not None:
                await self.before_write(topic)
            if self._failures.get(topic, 0) > 0:
                self._failures[topic] -= 1
                raise BusError(f"Kafka did not acknowledge the write to {topic}: twin failure")
        positions = []
        for topic, message in messages:
            kept = self.topics.setdefault(topic, [])
            positions.append(Position(topic, 0, len(kept)))
            kept.append(message)
        return positions

    def events(self, topic: str) -> list[WireModel]:
        """The decoded events published to one topic, in order."""
        return [codec.decode(m.key, m.value, m.headers) for m in self.topics.get(topic, [])]
