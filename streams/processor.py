"""What the faust agents do with one message: decode at the edge, call the core, store, publish.

Imports broker (core and adapters) and schemas; faust is only seen through ``Incoming`` and the
``Publish`` callable, so this module is testable without a running worker. Handlers never let an
error ack a message silently: bad bytes go to the dead-letter topic, transient store/bus failures
are retried (the partition waits), and a risk signal that cannot be handled stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from broker.adapters import codec
from broker.adapters.redis_store import Committed, RedisGrantStore
from broker.errors import BusError, StoreUnavailable, WireError
from broker.grants import (
    Outcome,
    decide,
    decision_audit,
    derive_id,
    duplicate_audit,
    lifecycle_audit,
    plan_revocation,
    revoked_events,
    risk_audit,
)
from broker.policy import Policy, RiskAction, RiskContext
from schemas import topics
from schemas.events import (
    AGENT_ID_PATTERN,
    OPERATOR_REVOKE_KIND,
    EscalationRequested,
    RiskObserved,
    WireModel,
)

log = logging.getLogger("permbroker.worker")
T = TypeVar("T")
SOURCE = "/permbroker/worker"
RISK_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class Incoming:
    """One consumed message, as the handlers need it."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def origin(self) -> str:
        """topic/partition/offset, for reasons and ids."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def received_at(self) -> datetime:
        """When Kafka appended the message (topics use LogAppendTime)."""
        return datetime.fromtimestamp(self.timestamp, tz=UTC)


# Publish(topic, messages) sends every message and returns once Kafka acknowledged all of them.
Publish = Callable[[str, Sequence[codec.Encoded]], Awaitable[None]]


class Processor:
    """The broker's decision logic wired to a store and a publisher."""

    def __init__(
        self, policy: Policy, store: RedisGrantStore, publish: Publish, *, margin_s: int = 3600
    ) -> None:
        self.policy = policy
        self.store = store
        self._publish = publish
        self._margin_s = margin_s
        self.ready = asyncio.Event()
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def emit(self, topic: str, *events: WireModel) -> None:
        """Encode and publish events to one topic, waiting for Kafka's acknowledgement."""
        if events:
            await self._publish(topic, [codec.encode(e, source=SOURCE) for e in events])

    async def dead_letter(self, msg: Incoming, reason: str) -> None:
        """Park a message that cannot be processed, with its raw bytes, origin and reason."""
        headers = [
            *msg.headers,
            (topics.DLQ_REASON, reason.encode()),
            (topics.DLQ_TOPIC, msg.topic.encode()),
            (topics.DLQ_PARTITION, str(msg.partition).encode()),
            (topics.DLQ_OFFSET, str(msg.offset).encode()),
        ]
        dlq = codec.Encoded(key=msg.key, value=msg.value or b"", headers=headers)
        await self._retrying("dead-letter", lambda: self._publish(topics.DEAD_LETTER.name, [dlq]))
        self._count("dead_lettered")
        log.warning("dead-lettered %s: %s", msg.origin, reason)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a store/bus step until it succeeds: the partition waits, nothing is acked."""
        delay = 0.05
        while True:
            try:
                return await call()
            except (StoreUnavailable, BusError) as exc:
                self._count("retries")
                log.warning("%s failed, retrying in %.2fs: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _decode(self, msg: Incoming, kind: type[T]) -> T:
        event = codec.decode(msg.key, msg.value, msg.headers)
        if not isinstance(event, kind):
            raise WireError(f"expected {kind.__name__} on {msg.topic}, got {type(event).__name__}")
        return event

    async def on_escalation(self, msg: Incoming) -> None:
        """Decide one escalation request (idempotent under redelivery)."""
        await self.ready.wait()
        try:
            request = self._decode(msg, EscalationRequested)
        except WireError as exc:
            await self.dead_letter(msg, str(exc))
            return
        await self._retrying("decide", lambda: self._decide(request, msg))

    async def _decide(self, request: EscalationRequested, msg: Incoming) -> None:
        received_at = msg.received_at
        agent = self.policy.agent(request.agent_id)
        for _attempt in range(3):
            now = datetime.now(UTC)
            state, live_risk = await asyncio.gather(  # two reads, one round trip
                self.store.agent_state(request.agent_id), self.store.live_risk(request.agent_id)
            )
            risk = RiskContext(agent=live_risk, request=request.risk_score)
            evaluation = self.policy.evaluate(request, agent, risk, now)
            outcome = decide(
                request, evaluation, agent=agent, state=state, received_at=received_at, now=now
            )
            committed = await self.store.commit(
                outcome,
                received_at=received_at,
                now=now,
                max_grant_s=self.policy.max_grant_duration_s,
            )
            if committed.status != "blocked":
                break
            log.info(
                "request %s blocked at commit (%s); deciding again",
                request.request_id,
                committed.blocked_reason,
            )
        await self._announce(committed, outcome, msg)

    async def _announce(self, committed: Committed, outcome: Outcome, msg: Incoming) -> None:
        decision = committed.decision
        if decision is None:  # blocked three times in a row: the next attempt starts over
            raise StoreUnavailable("agent state kept changing during the decision")
        if committed.status == "existing" and committed.published:
            self._count("duplicates")
            dup = duplicate_audit(
                decision, committed.grant is not None, msg.origin, datetime.now(UTC)
            )
            await self.emit(topics.AUDIT.name, dup)
            return
        if committed.status == "existing":  # stored before a crash, never published: finish it
            self._count("recovered")
            audit = decision_audit(decision, {"recovered_from": msg.origin})
        else:
            self._count(f"decided_{decision.outcome}")
            audit = outcome.audit
        # The grant and its audit record are acknowledged together (one wait, not two), and
        # both before the decision is announced: an agent told "granted" finds it in the log.
        grants = (committed.grant,) if committed.grant is not None else ()
        await asyncio.gather(
            self.emit(topics.GRANTS.name, *grants), self.emit(topics.AUDIT.name, audit)
        )
        await self.emit(topics.DECISIONS.name, decision)
        await self.store.mark_published(
            decision, received_at=msg.received_at, max_grant_s=self.policy.max_grant_duration_s
        )

    async def on_risk(self, msg: Incoming) -> None:
        """Apply revocation rules to one risk signal; a bad signal revokes its key's agent."""
        await self.ready.wait()
        try:
            signal = self._decode(msg, RiskObserved)
        except WireError as exc:
            await self.dead_letter(msg, str(exc))
            await self._fail_safe_revoke(msg, str(exc))
            return
        await self._retrying("risk", lambda: self._risk(signal, msg))

    async def _risk(self, signal: RiskObserved, msg: Incoming) -> None:
        now = msg.received_at
        subject = signal.subject_agent_id
        agent = self.policy.agent(subject) if subject else None
        action = (
            RiskAction(
                revoke=True,
                rule="operator-revoke",
                reason=f"revoked by {signal.source}: {signal.detail or 'no reason given'}",
            )
            if signal.kind == OPERATOR_REVOKE_KIND
            else self.policy.on_risk(signal, agent, now)
        )
        revoked: tuple[str, ...] = ()
        if action.revoke and subject:
            revoked = await self._revoke(subject, signal.signal_id, action, now)
        elif subject:
            await self.store.note_risk(subject, signal.severity, now + RISK_WINDOW)
        await self.emit(topics.AUDIT.name, risk_audit(signal, action, revoked, now))

    async def _revoke(
        self, agent_id: str, cause_id: str, action: RiskAction, now: datetime
    ) -> tuple[str, ...]:
        plan = plan_revocation(
            cause_id,
            agent_id,
            action,
            now=now,
            max_grant_s=self.policy.max_grant_duration_s,
            margin_s=self._margin_s,
        )
        grants = await self.store.revoke_all(plan)
        agent_event, per_grant = revoked_events(plan, grants)
        await self.emit(topics.GRANTS.name, *per_grant, agent_event)
        await self.emit(topics.AUDIT.name, *(lifecycle_audit(e, now) for e in per_grant))
        self._count("revocations")
        log.warning(
            "revoked %d grant(s) of %s (rule %s, cause %s)",
            len(grants),
            agent_id,
            plan.rule,
            cause_id,
        )
        return tuple(g.grant_id for g in grants)

    async def _fail_safe_revoke(self, msg: Incoming, reason: str) -> None:
        """A risk signal we cannot read may be a revocation: revoke the agent its key names."""
        agent_id = (msg.key or b"").decode(errors="replace")
        if not re.match(AGENT_ID_PATTERN, agent_id):
            log.error(
                "undecodable risk signal at %s names no agent; dead-lettered only", msg.origin
            )
            return
        action = RiskAction(
            revoke=True,
            rule="undecodable-risk-signal",
            reason=f"a risk signal about this agent could not be read ({reason}); "
            "revoking to fail closed",
        )
        await self._retrying(
            "fail-safe revoke",
            lambda: self._revoke(
                agent_id, derive_id("undecodable", msg.origin), action, msg.received_at
            ),
        )

    async def sweep_expiries(self) -> int:
        """Announce grants that reached their absolute expiry (Redis TTL already ended them)."""
        if not self.ready.is_set():
            return 0
        now = datetime.now(UTC)
        due = await self.store.due_expiries(now)
        announce = [e for e, live in due if live]
        await self.emit(topics.GRANTS.name, *announce)
        await self.emit(topics.AUDIT.name, *(lifecycle_audit(e, now) for e in announce))
        await self.store.ack_expiries([e for e, _ in due])
        for _ in announce:
            self._count("expired")
        return len(announce)
