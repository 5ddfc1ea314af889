"""The faust wiring: raw-bytes topics, agents and timers that hand each message to a handler.

Imports faust, broker, schemas and the streams handlers; builds nothing but the faust app and
its publisher (streams/bootstrap.py builds the handlers and calls ``wire``).

Topics are created by ``permbroker stack up`` (or the admin helper) from the registry; faust
does not declare them. No authoritative state lives in faust tables: Redis holds the view and
Kafka the record. faust acks a message whose handler raised, so every handler runs guarded
(streams/guard.py): retried while Redis or Kafka is unavailable, dead-lettered when it fails
for good; a risk signal that cannot be handled fails closed for the agent its key names.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust

from broker.adapters.audit.sealer import Sealer
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.codec import Encoded
from broker.config import Settings
from broker.delivery.consistency import Position
from broker.errors import BrokerError, BusError, StoreError
from schemas import topics
from streams.analytics import Analytics
from streams.approvals import Approvals
from streams.budgets import Budgets
from streams.escalations import Escalations
from streams.guard import guarded
from streams.identity.commands import Commands
from streams.lanes import Lanes
from streams.lifecycle import Lifecycle
from streams.risk import Risk
from streams.worker import Incoming, WorkerContext

log = logging.getLogger("permbroker.worker")
JWKS_INTERVAL_S = 1.0
# Well inside the grant topics' retention (30 days): a view always finds an announcement.
ROUTING_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Worker:
    """The handlers of one worker process, as streams/bootstrap.py built them."""

    ctx: WorkerContext
    escalations: Escalations
    risk: Risk
    lifecycle: Lifecycle
    approvals: Approvals
    budgets: Budgets
    analytics: Analytics
    commands: Commands
    start: Callable[[], Awaitable[None]]  # topics, store check, view, policy record; then ready
    announce: Callable[[], Awaitable[None]]  # the routed namespaces, on every namespace topic
    sealer: Callable[[], Sealer] | None  # a fresh audit sealer per (re)start; None: not here


def make_app(settings: Settings, kafka: KafkaAccess) -> faust.App:
    """The faust app for ``settings``, on Kafka as ``kafka`` says (``wire`` adds the agents)."""
    datadir = settings.stack_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    return faust.App(
        settings.app_id,
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=credentials(kafka),
        value_serializer="raw",
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=topics.PARTITIONS,
        topic_allow_declare=False,
        topic_disable_leader=True,
        producer_acks=-1,
        broker_commit_every=100,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=max(settings.session_timeout_s / 4, 1.0),
        datadir=str(datadir),
        # Fairness under a flood: small per-partition fetches and buffers, so one agent's
        # backlog cannot queue thousands of its messages ahead of other partitions' messages.
        consumer_max_fetch_size=64 * 1024,
        stream_buffer_maxsize=64,
        broker_max_poll_records=64,
    )


def credentials(kafka: KafkaAccess) -> faust.SASLCredentials | None:
    """faust's (aiokafka's) SASL credentials for ``kafka``; a CA context makes it SASL_SSL."""
    if not kafka.sasl:
        return None
    return faust.SASLCredentials(username=kafka.username, password=kafka.password,
                                 mechanism=kafka.sasl_mechanism, ssl_context=kafka.ssl_context())


class FaustPublisher:
    """The worker's ``Publisher``: faust's producer (acks=all); BusError when Kafka did not ack."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    async def publish(self, topic: str, messages: Sequence[Encoded]) -> list[Position]:
        """Send messages to one topic; where each landed."""
        return await self._send([(topic, m) for m in messages], f"the write to {topic}")

    async def publish_many(self, messages: Sequence[tuple[str, Encoded]]) -> list[Position]:
        """Send (topic, message) pairs in one go; where each landed."""
        return await self._send(messages, "a write to the grant topics")

    async def _send(self, messages: Sequence[tuple[str, Encoded]], what: str) -> list[Position]:
        producer = self._app.producer
        try:
            futures = [
                await producer.send(t, m.key, m.value, None, None, m.headers) for t, m in messages
            ]
            landed = await asyncio.gather(*futures)
        except Exception as exc:
            raise BusError(f"Kafka did not acknowledge {what}: {exc}") from exc
        return [Position(md.topic, md.partition, md.offset) for md in landed]


def incoming(event: Any) -> Incoming:
    """The handlers' view of one faust event."""
    m = event.message
    headers = m.headers or []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, items)


def consumed(app: faust.App) -> list[str]:
    """The broker's topics the app's agents consume (faust's own internal ones left out)."""
    known = {t.name for t in topics.ALL_TOPICS}
    return sorted({name for t in app.topics for name in t.topics} & known)


def wire(app: faust.App, worker: Worker, settings: Settings) -> None:
    """Add the worker's tasks, agents and timers to ``app``."""
    _watch_assignment(app, worker.ctx)
    app.task(worker.start)
    app.task(worker.commands.open)
    if worker.sealer is not None:
        _run_sealer(app, worker.sealer)
    _decisions(app, worker, settings.lane_limit)
    ctx = worker.ctx
    _each(app, ctx, topics.APPROVALS.name, "approvals", worker.approvals.on_vote)
    _each(app, ctx, topics.USAGE.name, "usage", worker.budgets.on_usage)
    if worker.escalations.delegations is not None:  # a parent's end ends its delegated children
        _each(app, ctx, topics.GRANTS.name, "delegation-cascade",
              worker.escalations.delegations.on_grant_event)
    _each(app, ctx, topics.DECISIONS.name, "behaviour", worker.analytics.on_decision)
    _each(app, ctx, topics.REGISTRY.name, "registry", worker.commands.on_registry,
          isolated=False)
    _each(app, ctx, topics.GRANT_COMMANDS.name, "grant-commands",
          worker.commands.on_grant_command, isolated=False)
    _timers(app, worker, settings.expiry_interval_s)


def _decisions(app: faust.App, worker: Worker, lane_limit: int) -> None:
    """The escalation agent (per-agent lanes) and the risk agent (fails closed per signal)."""
    escalations = app.topic(topics.ESCALATIONS.name, value_type=bytes, key_type=bytes)
    risk = app.topic(topics.RISK.name, value_type=bytes, key_type=bytes)
    ctx = worker.ctx

    async def escalate(msg: Incoming) -> None:
        await guarded(ctx, msg, worker.escalations.on_escalation)

    # One actor per partition; within it, agents' requests run concurrently, each agent's in
    # order, each acked once handled (streams/lanes.py): the offset commit never passes one.
    # A failing request is dead-lettered by the guard: its lane goes on with the next one.
    @app.agent(escalations, name="escalations", isolated_partitions=True)
    async def on_escalation(stream: Any) -> None:
        lanes: Lanes[Incoming] = Lanes(escalate, limit=lane_limit)
        try:
            async for event in stream.noack().events():
                msg = incoming(event)
                await lanes.submit(msg.key, msg, event.ack)
            await lanes.drain()
        finally:
            lanes.cancel()

    # A signal whose handling fails for good is dead-lettered and, if validly signed, revokes
    # the agent its key names (retried until done: the partition waits, the worker goes on).
    @app.agent(risk, name="risk", isolated_partitions=True)
    async def on_risk(stream: Any) -> None:
        async for event in stream.events():
            await guarded(ctx, incoming(event), worker.risk.on_risk,
                          fail_safe=worker.risk.fail_safe)


def _each(app: faust.App, ctx: WorkerContext, topic: str, name: str,
          handle: Callable[[Incoming], Awaitable[None]], *, isolated: bool = True) -> None:
    """An agent that hands each message of ``topic`` to ``handle``, one at a time, guarded."""
    channel = app.topic(topic, value_type=bytes, key_type=bytes)

    async def consume(stream: Any) -> None:
        async for event in stream.events():
            await guarded(ctx, incoming(event), handle)

    app.agent(channel, name=name, isolated_partitions=isolated)(consume)


def _timers(app: faust.App, worker: Worker, expiry_interval_s: float) -> None:
    """Expiries and expiry warnings, approval windows, the routing announcement, the JWKS."""

    @app.timer(expiry_interval_s)  # type: ignore[untyped-decorator]
    async def expiries() -> None:
        try:
            await worker.lifecycle.sweep()
        except (StoreError, BusError) as exc:
            log.warning("expiry sweep failed, will retry: %s", exc)

    @app.timer(max(expiry_interval_s, 0.2))  # type: ignore[untyped-decorator]
    async def approval_windows() -> None:
        try:
            await worker.approvals.sweep()
        except (StoreError, BusError) as exc:
            log.warning("approval window sweep failed, will retry: %s", exc)

    @app.timer(ROUTING_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def routing() -> None:
        if worker.ctx.ready.is_set():
            await worker.announce()

    @app.timer(JWKS_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def jwks() -> None:
        if worker.commands.ready.is_set():
            try:
                await worker.commands.publish_jwks()
            except BrokerError as exc:
                log.warning("JWKS publication failed, will retry: %s", exc)


def _watch_assignment(app: faust.App, ctx: WorkerContext) -> None:
    """Claim a fencing epoch for each partition assigned; forget the revoked ones."""

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(_app: Any, revoked: set[Any], **_kw: Any) -> None:
        ctx.release([(tp.topic, tp.partition) for tp in revoked])

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(_app: Any, assigned: set[Any], **_kw: Any) -> None:
        # Every assignment claims anew, even a partition kept across the rebalance: a worker
        # that stalled and came back must never keep writing with an epoch someone superseded.
        ctx.claimed.clear()
        try:
            ctx.release(list(ctx.epochs))
            await ctx.claim([(tp.topic, tp.partition) for tp in assigned])
        finally:
            ctx.claimed.set()


def _run_sealer(app: faust.App, make_sealer: Callable[[], Sealer]) -> None:
    """Seal the raw audit topic in a thread of this worker (restarted if it ever fails)."""
    stopping = threading.Event()
    current: list[Sealer] = []

    @app.task  # type: ignore[untyped-decorator]
    async def seal() -> None:
        while not stopping.is_set():
            sealer = make_sealer()
            current[:] = [sealer]
            try:
                await asyncio.to_thread(sealer.run)
            except Exception:  # the outermost loop of the sealer: log, then start over
                log.exception("audit sealer stopped; restarting it in 1s")
                await asyncio.sleep(1.0)

    async def stop(_app: Any, /, *_args: Any, signal: Any, **_kw: Any) -> None:
        stopping.set()
        for sealer in current:
            sealer.stop()

    app.on_before_shutdown.connect(stop)
