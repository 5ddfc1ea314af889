"""Revocation acknowledgements on Kafka: publish them from a view, read them back, follow them.

Imports confluent-kafka, bus, codec, edge, follow, crypto (signing), core and schemas. The
publisher never blocks the view's consumer thread: it queues the message and lets librdkafka
deliver it (``poll`` serves the delivery reports, ``close`` flushes). An ack that cannot be
delivered is counted and shows up as unconfirmed in ``permbroker revocations status``: it is a
report, never a safety decision. Every ack and status report is signed by the enforcement
point's own key (``ServiceIdentity``); readers count only those whose signature verifies against
the services file and whose signer is the point the report names (the decode edge checks both).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from broker.adapters.crypto.service_key import ServiceIdentity
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, consumer, partitions, producer_config, to_record
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.edge import Trust
from broker.adapters.kafka.follow import Follower
from broker.delivery.freshness import Freshness
from broker.errors import BusError
from broker.grants.decide import derive_id
from schemas import topics
from schemas.events import (
    AgentRevoked,
    EnforcementPointStatus,
    RevocationAcknowledged,
    WireModel,
)

log = logging.getLogger("permbroker.acks")


class AckPublisher:
    """Queues revocation acks and status reports of one enforcement point."""

    def __init__(self, kafka: KafkaAccess, identity: ServiceIdentity) -> None:
        self.name = identity.name
        self._identity = identity
        self._producer = Producer({**producer_config(kafka), "linger.ms": 5})
        self._source = f"/enforcement/{identity.name}"
        self.failed = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1
            log.warning("enforcement point %s: ack not delivered: %s", self.name, err)

    def _send(self, event: WireModel) -> None:
        m = self._identity.sign(encode(event, source=self._source))
        try:
            self._producer.produce(topics.REVOCATION_ACKS.name, value=m.value, key=m.key,
                                   headers=list(m.headers), on_delivery=self._on_delivery)
        except (BufferError, KafkaException) as exc:
            self.failed += 1
            log.warning("enforcement point %s: ack not queued: %s", self.name, exc)

    def ack(
        self, revoked: AgentRevoked, record: Record, applied_at: float, *, replayed: bool = False
    ) -> None:
        """Confirm one applied revocation (only while its markers still matter)."""
        applied = datetime.fromtimestamp(applied_at, tz=UTC)
        if revoked.markers_until <= applied:
            return  # an old revocation replayed at bootstrap: nothing left to confirm
        self._send(RevocationAcknowledged(
            ack_id=derive_id(
                "ack", f"{self.name}\x1f{revoked.cause_event_id}", revoked.agent_id
            ),
            enforcement_point=self.name, agent_id=revoked.agent_id,
            cause_event_id=revoked.cause_event_id, grant_ids=revoked.grant_ids,
            revoked_at=revoked.revoked_at, applied_at=applied, topic=record.topic,
            partition=record.partition, offset=record.offset, replayed=replayed,
        ))

    def status(self, topic: str, freshness: Freshness, started_at: datetime) -> None:
        """Report that this point exists and how current it is."""
        self._send(EnforcementPointStatus(
            enforcement_point=self.name, topic=topic, ready=freshness.ready,
            staleness_s=freshness.staleness_s, lag=freshness.lag, started_at=started_at,
            reported_at=datetime.now(UTC),
        ))

    def poll(self) -> None:
        """Serve delivery reports (never blocks)."""
        self._producer.poll(0)

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what is queued."""
        self._producer.flush(timeout)


def read_since(
    kafka: KafkaAccess, topic: str, since: datetime, *, trust: Trust, reader: str,
    timeout: float = 30.0,
) -> Iterator[Record]:
    """Every record of ``topic`` appended since ``since``, up to its end at call time, read
    through the decode edge (refused records come with their reason)."""
    c = consumer(kafka)
    try:
        parts = partitions(c, topic, user=kafka.username)
        stamp = int(since.timestamp() * 1000)
        starts = c.offsets_for_times([TopicPartition(topic, p, stamp) for p in parts], timeout=10)
        todo: dict[int, int] = {}
        assign = []
        for tp in starts:
            _low, high = c.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
            start = tp.offset if tp.offset >= 0 else high
            if start < high:
                todo[tp.partition] = high
                assign.append(TopicPartition(topic, tp.partition, start))
        c.assign(assign)
        yield from _drain(c, topic, todo, timeout, trust, reader)
    except KafkaException as exc:
        raise BusError(f"cannot read {topic}: {exc}") from exc
    finally:
        c.close()


def _drain(c: Consumer, topic: str, todo: dict[int, int], timeout: float, trust: Trust,
           reader: str) -> Iterator[Record]:
    deadline = time.monotonic() + timeout
    while todo:
        if time.monotonic() > deadline:
            raise BusError(f"reading {topic} did not reach its end within {timeout}s")
        msg = c.poll(0.2)
        if msg is None or msg.error():
            continue
        rec = to_record(msg, trust, reader=reader)
        yield rec
        if rec.offset + 1 >= todo.get(rec.partition, 0):
            todo.pop(rec.partition, None)


class AckFollower:
    """Follows the acks topic from ``since``; hands each verified ack and status to a callback."""

    def __init__(
        self, kafka: KafkaAccess, since: datetime,
        on_event: Callable[[RevocationAcknowledged | EnforcementPointStatus], None], *,
        trust: Trust,
    ) -> None:
        self._on_event = on_event
        self._follower = Follower(kafka, topics.REVOCATION_ACKS.name, self._apply,
                                  trust=trust, reader="acks", name="permbroker-acks", start=since)

    def _apply(self, record: Record) -> None:
        if isinstance(record.event, RevocationAcknowledged | EnforcementPointStatus):
            self._on_event(record.event)

    def close(self) -> None:
        """Stop following."""
        self._follower.close()
