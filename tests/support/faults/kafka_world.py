"""The property world with a real Kafka in the loop. Imports broker, schemas, streams, tests.

Each message the model delivers is produced to its real topic and consumed back (its offset,
headers and LogAppendTime are Kafka's); the worker code publishes through a real producer
(acks=all), the model reads the grant, decision and audit topics back from Kafka, and the view is
rebuilt by the product's ``rebuild.collect``, reading the whole grant topic. The topics outlive
an example, so each example's agents have ids of their own (``KafkaWorld.suffix``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Sequence
from datetime import datetime

import redis
from confluent_kafka import KafkaError, Message, Producer, TopicPartition

from broker.adapters.kafka import codec, rebuild
from broker.adapters.kafka.bus import Record, consumer, producer_config, to_record
from broker.adapters.redis.store import RedisGrantStore
from broker.delivery.consistency import Position
from broker.errors import BusError
from broker.policy import Policy
from schemas import topics
from schemas.events import WireModel
from streams.worker import Incoming
from tests.support.faults.gate import Identities
from tests.support.faults.world import MARGIN_S, World
from tests.support.taps import Tap
from tests.support.waits import wait_until

READ_BACK = (topics.GRANTS.name, topics.DECISIONS.name, topics.AUDIT_RAW.name)
_EXAMPLES = itertools.count()


class KafkaBus:
    """The worker's publisher on a real Kafka, and a reader of what it wrote there."""

    def __init__(self, bootstrap: str) -> None:
        self._producer = Producer(producer_config(bootstrap))
        self._taps = {t: Tap(bootstrap, t) for t in READ_BACK}
        self._wrote: dict[tuple[str, int], int] = {}  # (topic, partition) -> last offset
        self._lock = threading.Lock()

    async def publish(self, topic: str, messages: Sequence[codec.Encoded]) -> list[Position]:
        """Send messages to one topic; where each landed."""
        return await self.publish_many([(topic, m) for m in messages])

    async def publish_many(self, messages: Sequence[tuple[str, codec.Encoded]]) -> list[Position]:
        """Send (topic, message) pairs, in order, and wait for Kafka's acknowledgement."""
        return await asyncio.to_thread(self.send, messages)

    def send(self, messages: Sequence[tuple[str, codec.Encoded]]) -> list[Position]:
        """Blocking ``publish_many``."""
        landed: list[Position | KafkaError] = []

        def done(err: KafkaError | None, msg: Message) -> None:
            landed.append(err or Position(msg.topic() or "", msg.partition() or 0,
                                          msg.offset() or 0))

        with self._lock:
            for topic, m in messages:
                self._producer.produce(topic, m.value, m.key, headers=m.headers,
                                       on_delivery=done)
            self._producer.flush(30)
        failed = [x for x in landed if isinstance(x, KafkaError)]
        if failed or len(landed) != len(messages):
            raise BusError(f"Kafka did not acknowledge {len(messages) - len(landed)} message(s)"
                           f"{': ' + str(failed[0]) if failed else ''}")
        positions = [x for x in landed if isinstance(x, Position)]
        with self._lock:
            for p in positions:
                key = (p.topic, p.partition)
                self._wrote[key] = max(self._wrote.get(key, -1), p.offset)
        return positions

    def events(self, topic: str) -> list[WireModel]:
        """What was written to ``topic``, read back from Kafka (every write, in log order)."""
        tap = self._taps[topic]
        with self._lock:
            wanted = {p: o for (t, p), o in self._wrote.items() if t == topic}

        def caught_up() -> bool:
            seen = tap.last_offsets()
            return all(seen.get(p, -1) >= o for p, o in wanted.items())

        wait_until(caught_up, 30, f"{topic} read back from Kafka", every=0.002)
        return tap.events(WireModel)

    def records(self, topic: str) -> list[Record]:
        """The records read back from ``topic`` so far."""
        return list(self._taps[topic].records)

    def close(self) -> None:
        """Close the readers and the producer."""
        for tap in self._taps.values():
            tap.close()
        self._producer.flush(10)


class KafkaWorld(World):
    """``World`` with every input and output crossing a real Kafka broker."""

    def __init__(self, url: str, policy: Policy, ids: Identities, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.suffix = f"k{next(_EXAMPLES)}-{int(time.time() * 1000) % 10**9}"
        self._reader = consumer(bootstrap)
        super().__init__(url, policy, ids)

    def _bus(self) -> KafkaBus:  # type: ignore[override]
        return KafkaBus(self.bootstrap)

    def append(self, topic: str, message: codec.Encoded, received_at: datetime) -> Incoming:
        """Produce ``message`` and consume it back: Kafka gives its offset and append time."""
        assert isinstance(self.bus, KafkaBus)
        (where,) = self.bus.send([(topic, message)])
        self._reader.assign([TopicPartition(topic, where.partition, where.offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = self._reader.poll(0.5)
            if msg is None or msg.error() or msg.offset() != where.offset:
                continue
            rec = to_record(msg)
            return Incoming(topic, rec.partition, rec.offset, rec.timestamp_ms / 1000,
                            rec.key, rec.raw, list(rec.headers))
        raise AssertionError(f"{topic}/{where.partition}/{where.offset} never read back")

    def grant_records(self) -> list[Record]:
        """The grant topic as read back from Kafka (this example's writes and all before)."""
        assert isinstance(self.bus, KafkaBus)
        self.bus.events(topics.GRANTS.name)
        return self.bus.records(topics.GRANTS.name)

    async def _rebuild_live(self) -> int:
        now = await self.store.now()
        folded = await asyncio.to_thread(rebuild.collect, self.bootstrap, now)
        return await rebuild.apply(self.store, folded, now)

    def rebuild_elsewhere(self, now: datetime) -> RedisGrantStore:
        """``grants rebuild`` into an empty db 1: the whole grant topic, read from Kafka."""
        other = redis.Redis.from_url(self.rebuilt_url)
        other.flushdb()
        other.close()
        store = RedisGrantStore.from_url(self.rebuilt_url, margin_s=MARGIN_S)
        self.run(rebuild.apply(store, rebuild.collect(self.bootstrap, now), now))
        return store

    def close(self) -> None:
        """Close Kafka's clients, then the rest."""
        assert isinstance(self.bus, KafkaBus)
        self.bus.close()
        self._reader.close()
        super().close()
