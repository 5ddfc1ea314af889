"""The property world with a real Kafka in the loop. Imports broker, schemas, streams, tests.

Each message the model delivers is produced to its real topic as an agent and consumed back as
the worker (its offset, headers and LogAppendTime are Kafka's); the worker code publishes through
a real producer (acks=all) as the worker, the model reads the grant, decision and audit topics
back from Kafka, and the view is rebuilt by the product's ``rebuild.collect``, reading the whole
grant topic and verifying every record with the broker's chain of trust. Every client is on Kafka
as the user of its role (``role_access``). The topics outlive an example, so each example's
agents have ids of their own (``KafkaWorld.suffix``).
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
from broker.config import Settings
from broker.delivery.consistency import Position
from broker.errors import BusError
from broker.policy import Policy
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import WireModel
from streams.worker import Incoming
from tests.support.faults.model.gate import Identities
from tests.support.faults.model.world import MARGIN_S, World
from tests.support.taps import Tap
from tests.support.waits import wait_until

READ_BACK = (topics.GRANTS.name, topics.DECISIONS.name, topics.AUDIT_RAW.name)
_EXAMPLES = itertools.count()


class KafkaBus:
    """The worker's publisher on a real Kafka, and a reader of what it wrote there."""

    def __init__(self, settings: Settings) -> None:
        self._producer = Producer(producer_config(role_access(settings, topics.WORKER)))
        admin = role_access(settings, topics.ADMIN)  # a tap reads whatever the model watches
        self._taps = {t: Tap(admin, t) for t in READ_BACK}
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
        with self._lock:
            positions = _send(self._producer, messages)
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

    def __init__(self, policy: Policy, ids: Identities, settings: Settings) -> None:
        self.settings = settings
        self.suffix = f"k{next(_EXAMPLES)}-{int(time.time() * 1000) % 10**9}"
        self._sender = Producer(producer_config(role_access(settings, topics.AGENT)))
        self._reader = consumer(role_access(settings, topics.WORKER))
        super().__init__(settings.redis_url, policy, ids)

    def _bus(self) -> KafkaBus:  # type: ignore[override]
        return KafkaBus(self.settings)

    def append(self, topic: str, message: codec.Encoded, received_at: datetime) -> Incoming:
        """Produce ``message`` as an agent and consume it back as the worker: Kafka gives its
        offset and append time."""
        (where,) = _send(self._sender, [(topic, message)])
        self._reader.assign([TopicPartition(topic, where.partition, where.offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = self._reader.poll(0.5)
            if msg is None or msg.error() or msg.offset() != where.offset:
                continue
            rec = to_record(msg, None)  # as consumed: the gate checks its signature
            return Incoming(topic, rec.partition, rec.offset, rec.timestamp_ms / 1000,
                            rec.key, rec.raw, list(rec.headers))
        raise AssertionError(f"{topic}/{where.partition}/{where.offset} never read back")

    def grant_records(self) -> list[Record]:
        """The grant topic as read back from Kafka (this example's writes and all before)."""
        assert isinstance(self.bus, KafkaBus)
        self.bus.events(topics.GRANTS.name)
        return self.bus.records(topics.GRANTS.name)

    async def _rebuild_live(self) -> int:
        """The worker's own rebuild: as the worker, with the worker's trust."""
        now = await self.store.now()
        folded = await asyncio.to_thread(rebuild.collect, role_access(
            self.settings, topics.WORKER), now, self.trust)
        return await rebuild.apply(self.store, folded, now)

    def rebuild_elsewhere(self, now: datetime) -> RedisGrantStore:
        """``grants rebuild`` into an empty db 1: the whole grant topic, read from Kafka as the
        operator's CLI reads it (its own chain of trust from the broker's anchor)."""
        other = redis.Redis.from_url(self.rebuilt_url)
        other.flushdb()
        other.close()
        store = RedisGrantStore.from_url(self.rebuilt_url, margin_s=MARGIN_S)
        folded = rebuild.collect(role_access(self.settings, topics.OPERATOR), now,
                                 self.ids.trust())
        self.run(rebuild.apply(store, folded, now))
        return store

    def close(self) -> None:
        """Close Kafka's clients, then the rest."""
        assert isinstance(self.bus, KafkaBus)
        self.bus.close()
        self._sender.flush(10)
        self._reader.close()
        super().close()


def _send(producer: Producer, messages: Sequence[tuple[str, codec.Encoded]]) -> list[Position]:
    """Send (topic, message) pairs in order and wait for Kafka's acknowledgement of each; where
    each landed (BusError if any was not acknowledged)."""
    landed: list[Position | KafkaError] = []

    def done(err: KafkaError | None, msg: Message) -> None:
        landed.append(err or Position(msg.topic() or "", msg.partition() or 0,
                                      msg.offset() or 0))

    for topic, m in messages:
        producer.produce(topic, m.value, m.key, headers=m.headers, on_delivery=done)
    producer.flush(30)
    failed = [x for x in landed if isinstance(x, KafkaError)]
    if failed or len(landed) != len(messages):
        raise BusError(f"Kafka did not acknowledge {len(messages) - len(landed)} message(s)"
                       f"{': ' + str(failed[0]) if failed else ''}")
    return [x for x in landed if isinstance(x, Position)]
