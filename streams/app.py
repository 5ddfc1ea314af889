"""The faust app: raw-bytes topics, agents that hand each message to the Processor.

Imports faust, broker.

Run it with ``permbroker worker``. Topics are created by ``permbroker stack up`` (or the admin
helper) from the registry; faust does not declare them. No authoritative state lives in faust
tables: Redis holds the view and Kafka the record.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Sequence
from typing import Any

import faust

from broker.adapters.audit.keys import AuditKeys, load_keys
from broker.adapters.audit.sealer import Sealer
from broker.adapters.kafka import codec, rebuild
from broker.adapters.kafka.admin import ensure_topics
from broker.adapters.redis.store import RedisGrantStore
from broker.audit.records import rebuild_audit
from broker.audit.redact import Redactor
from broker.config import Settings
from broker.delivery.consistency import Position
from broker.delivery.routing import GrantRouting
from broker.errors import BusError, StoreError
from broker.policy import Policy, load_policy
from schemas import topics
from streams import analytics, approvals_app
from streams import budgets as budgets_app
from streams.identity import wiring as identity_app
from streams.lanes import Lanes
from streams.lifecycle import Lifecycle
from streams.metrics import serve_metrics
from streams.processor import Incoming, Processor

log = logging.getLogger("permbroker.worker")


def _incoming(event: Any) -> Incoming:
    m = event.message
    headers = m.headers or []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, items)


def create_app(settings: Settings, policy: Policy | None = None) -> faust.App:
    """Build the worker app for ``settings``."""
    policy = policy or load_policy(settings.policy_path)
    datadir = settings.stack_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
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
    store = RedisGrantStore.from_url(
        settings.redis_url, margin_s=settings.record_margin_s,
        warn_before_s=settings.expiry_warning_s,
    )

    async def publish(topic: str, messages: Sequence[codec.Encoded]) -> list[Position]:
        producer = app.producer
        try:
            futures = [
                await producer.send(topic, m.key, m.value, None, None, m.headers) for m in messages
            ]
            landed = await asyncio.gather(*futures)
        except Exception as exc:
            raise BusError(f"Kafka did not acknowledge the write to {topic}: {exc}") from exc
        return [Position(md.topic, md.partition, md.offset) for md in landed]

    async def publish_many(messages: Sequence[tuple[str, codec.Encoded]]) -> list[Position]:
        producer = app.producer
        try:
            futures = [
                await producer.send(t, m.key, m.value, None, None, m.headers) for t, m in messages
            ]
            landed = await asyncio.gather(*futures)
        except Exception as exc:
            raise BusError(f"Kafka did not acknowledge a write to the grant topics: {exc}") from exc
        return [Position(md.topic, md.partition, md.offset) for md in landed]

    routing = GrantRouting(frozenset(settings.grant_namespaces))
    keys = load_keys(settings)  # ConfigError (the worker refuses to start) when missing
    redactor = Redactor.configured(
        keys.hmac_key,
        free_text=settings.audit_redact_free_text,
        extra=settings.audit_sensitive_fields.split(","),
    )

    async def rebuild_view() -> int:
        now = await store.now()
        folded = await asyncio.to_thread(rebuild.collect, settings.kafka_bootstrap, now)
        restored = await rebuild.apply(store, folded, now)
        await processor.audit_until_written(rebuild_audit(
            f"worker {socket.gethostname()}:{os.getpid()}", now, records=folded.records,
            restored=restored, revocations=len(folded.revocations),
            undecodable=folded.undecodable))
        return restored

    processor = Processor(
        policy,
        store,
        publish,
        margin_s=settings.record_margin_s,
        rebuild=rebuild_view,
        fencing=True,
        redactor=redactor,
        audit_timeout_s=settings.audit_timeout_s,
        routing=routing,
        publish_many=publish_many,
    )
    lifecycle = Lifecycle(processor, store, margin_s=settings.record_margin_s)
    app.processor = processor  # type: ignore[attr-defined]
    _watch_assignment(app, processor)
    metrics = serve_metrics(processor, settings.metrics_port)
    if settings.audit_sealer:
        _run_sealer(app, settings, keys)
    app.identity = identity_app.install(app, processor, settings, policy)  # type: ignore[attr-defined]
    app.budgets = budgets_app.install(app, processor, settings)  # type: ignore[attr-defined]
    app.analytics = analytics.install(app, processor, settings, publish, metrics)  # type: ignore[attr-defined]

    escalations = app.topic(topics.ESCALATIONS.name, value_type=bytes, key_type=bytes)
    risk = app.topic(topics.RISK.name, value_type=bytes, key_type=bytes)
    approvals_app.install(app, processor, store, settings)

    @app.task  # type: ignore[untyped-decorator]
    async def prepare() -> None:
        routed = [topics.by_name(t) for t in routing.topics()]
        await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, routed)
        await _prepare(processor, store, settings, policy)

    # One actor per partition; within it, agents' requests run concurrently, each agent's in
    # order, each acked once handled (streams/lanes.py): the offset commit never passes one.
    @app.agent(escalations, name="escalations", isolated_partitions=True)
    async def on_escalation(stream: Any) -> None:
        lanes: Lanes[Incoming] = Lanes(processor.on_escalation, limit=settings.lane_limit)
        try:
            async for event in stream.noack().events():
                msg = _incoming(event)
                await lanes.submit(msg.key, msg, event.ack)
            await lanes.drain()
        finally:
            lanes.cancel()

    @app.agent(risk, name="risk", isolated_partitions=True)
    async def on_risk(stream: Any) -> None:
        async for event in stream.events():
            try:
                await processor.on_risk(_incoming(event))
            except Exception:
                log.critical(
                    "risk signal %s could not be processed; stopping the worker so the "
                    "partition halts instead of skipping a revocation",
                    _incoming(event).origin,
                    exc_info=True,
                )
                logging.shutdown()
                os._exit(70)

    @app.timer(settings.expiry_interval_s)  # type: ignore[untyped-decorator]
    async def expiries() -> None:
        try:
            await lifecycle.sweep()
        except (StoreError, BusError) as exc:
            log.warning("expiry sweep failed, will retry: %s", exc)

    return app


def _watch_assignment(app: faust.App, processor: Processor) -> None:
    """Claim a fencing epoch for each partition assigned; forget the revoked ones."""

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def revoked(_app: Any, revoked: set[Any], **_kw: Any) -> None:
        processor.release([(tp.topic, tp.partition) for tp in revoked])

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(_app: Any, assigned: set[Any], **_kw: Any) -> None:
        # Every assignment claims anew, even a partition kept across the rebalance: a worker
        # that stalled and came back must never keep writing with an epoch someone superseded.
        processor.claimed.clear()
        try:
            processor.release(list(processor.epochs))
            await processor.claim([(tp.topic, tp.partition) for tp in assigned])
        finally:
            processor.claimed.set()


async def _prepare(
    processor: Processor, store: RedisGrantStore, settings: Settings, policy: Policy
) -> None:
    """Refuse an evicting Redis; rebuild the view from Kafka when it was never built (or wiped)."""
    while True:
        try:
            await store.check_config()
            await processor.ensure_view()
            break
        except (StoreError, BusError) as exc:
            log.error("worker not ready: %s (retrying)", exc)
            await asyncio.sleep(1.0)
    await processor.announce_policy(f"{socket.gethostname()}:{os.getpid()}")
    log.info("worker ready: policy %s revision %s", policy.source, policy.revision)
    processor.ready.set()


def _run_sealer(app: faust.App, settings: Settings, keys: AuditKeys) -> None:
    """Seal the raw audit topic in a thread of this worker (restarted if it ever fails)."""
    stopping = threading.Event()
    current: list[Sealer] = []

    @app.task  # type: ignore[untyped-decorator]
    async def seal() -> None:
        while not stopping.is_set():
            sealer = Sealer(settings, keys)
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
