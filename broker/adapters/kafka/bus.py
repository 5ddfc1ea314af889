"""Kafka access outside faust (SDKs, CLI, rebuild, demo) with confluent-kafka.

Imports schemas, access, codec, edge (every message read here goes through the decode edge).

Producers use the Java-compatible murmur2 partitioner so a key lands on the same partition as
when faust (aiokafka) produces it: one agent, one partition, whoever writes.
Every call here blocks; never call it from inside a faust agent.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable, Iterable, Iterator

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.clientlog import routed
from broker.adapters.kafka.codec import Encoded, encode
from broker.adapters.kafka.edge import Record, Trust, read_message
from broker.errors import BusError, KafkaNotAllowed
from schemas.events import WireModel
from schemas.topics import group_prefix

__all__ = ["Publisher", "Record", "consumer", "end_offsets", "partitions", "producer_config",
           "read_all", "to_record"]


def producer_config(kafka: KafkaAccess) -> dict[str, object]:
    """Settings every permbroker producer shares."""
    return routed({
        **kafka.confluent(),
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
    })


class Publisher:
    """Publishes wire models as CloudEvents and waits for the broker's acknowledgement."""

    def __init__(
        self,
        kafka: KafkaAccess,
        *,
        source: str,
        signer: Callable[[Encoded], Encoded] | None = None,
    ) -> None:
        self._principal = kafka.principal
        self._refused: KafkaError | None = None  # Kafka refused our credentials
        self._producer = Producer({**producer_config(kafka), "error_cb": self._on_error})
        self._source = source
        self._signer = signer  # adds the sender's ce_signature to every message it publishes

    def signing_with(self, signer: Callable[[Encoded], Encoded]) -> Publisher:
        """This publisher (the same producer) signing with ``signer`` instead: the HTTP API
        relays each call with the assertion of the principal it relays for."""
        clone = copy.copy(self)
        clone._signer = signer
        return clone

    def publish(self, topic: str, event: WireModel, *, timeout: float = 10.0) -> None:
        """Produce one event and block until Kafka acknowledged it (or raise BusError)."""
        self.publish_raw(topic, encode(event, source=self._source), timeout=timeout)

    def publish_raw(self, topic: str, message: Encoded, *, timeout: float = 10.0) -> None:
        """Produce one already-encoded message and wait for its acknowledgement."""
        self.publish_many(topic, [message], timeout=timeout)

    def publish_many(
        self, topic: str, messages: Iterable[Encoded | WireModel], *, timeout: float = 30.0
    ) -> None:
        """Produce a batch, then wait once for every acknowledgement (or raise BusError)."""
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        try:
            for item in messages:
                m = item if isinstance(item, Encoded) else encode(item, source=self._source)
                self._produce(topic, self._signer(m) if self._signer else m, on_delivery)
        except KafkaException as exc:
            raise BusError(f"cannot produce to {topic}: {exc}") from exc
        self._flush(topic, timeout)
        if errors:
            raise BusError(f"Kafka refused the write to {topic}: {errors[0]}")

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka retries a refused login until the write times out: remember it instead."""
        if err.code() == KafkaError._AUTHENTICATION or err.fatal():
            self._refused = err

    def _flush(self, topic: str, timeout: float) -> None:
        """Wait for every acknowledgement; a refused login fails at once, naming the user."""
        deadline = time.monotonic() + timeout
        while self._producer.flush(min(0.2, max(deadline - time.monotonic(), 0.0))) > 0:
            if self._refused is not None:
                raise BusError(f"Kafka refused {self._principal} writing to {topic}: "
                               f"{self._refused.str()}")
            if time.monotonic() >= deadline:
                raise BusError(f"Kafka did not acknowledge the write to {topic} within "
                               f"{timeout}s")

    def _produce(self, topic: str, m: Encoded, on_delivery: Callable[..., None]) -> None:
        while True:
            try:
                headers: list[tuple[str, str | bytes | None]] = list(m.headers)
                self._producer.produce(
                    topic, value=m.value, key=m.key, headers=headers, on_delivery=on_delivery
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then go on
                self._producer.poll(0.05)


def consumer(kafka: KafkaAccess, *, group: str | None = None, **extra: object) -> Consumer:
    """A consumer that never commits unless it is given a group (readers assign partitions).

    A reader's throwaway group id is in its role's group prefix (librdkafka looks its
    coordinator up, which the ACLs allow for that prefix only).
    """
    role = kafka.username or "anonymous"
    config: dict[str, object] = {
        **kafka.confluent(),
        "group.id": group or f"{group_prefix(role)}reader-{uuid.uuid4()}",
        "enable.auto.commit": bool(group),
        "auto.offset.reset": "earliest",
        # A fetch waits at the broker until a record arrives (it answers at once then) or this
        # long: idle readers ask ten times a second instead of a hundred, which cost the broker
        # CPU the worker needs on a small machine.
        "fetch.wait.max.ms": 100,
        "enable.partition.eof": False,
    }
    config.update(extra)
    return Consumer(routed(config))


def partitions(c: Consumer, topic: str, timeout: float = 10.0, *, user: str = "") -> list[int]:
    """Partition ids of a topic (KafkaNotAllowed, naming ``user``, when its ACLs refuse it)."""
    try:
        meta = c.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"cannot read metadata of {topic}: {exc}") from exc
    info = meta.topics.get(topic)
    if info is not None and info.error is not None \
            and info.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        who = f"Kafka user {user}" if user else "this Kafka user"
        raise KafkaNotAllowed(f"{who} is not authorized to read {topic} (its ACLs)")
    if info is None or info.error is not None:
        raise BusError(f"topic {topic} does not exist (run: permbroker stack up, or create topics)")
    return sorted(info.partitions)


# A partition just created (or moved) can be listed before its leader serves it.
_LEADER_MOVING = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE})


def end_offsets(c: Consumer, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The current log end offset of every partition (waiting out a leader still moving in)."""
    out = {}
    deadline = time.monotonic() + timeout
    for p in partitions(c, topic, timeout):
        while p not in out:
            try:
                out[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                moving = isinstance(error, KafkaError) and error.code() in _LEADER_MOVING
                if not moving or time.monotonic() >= deadline:
                    raise BusError(f"cannot read offsets of {topic}: {exc}") from exc
                time.sleep(0.1)
    return out


def to_record(msg: Message, trust: Trust | None, *, reader: str = "",
              signed_by: str | None = None) -> Record:
    """Read a consumed message through the decode edge (``edge.read``): never raises."""
    return read_message(msg, trust=trust, reader=reader, signed_by=signed_by)


def read_all(
    kafka: KafkaAccess, topic: str, *, trust: Trust | None, reader: str = "",
    timeout: float = 30.0, stop: Callable[[], bool] | None = None, since_ms: int | None = None,
) -> Iterator[Record]:
    """Every message of a topic from the beginning (or the first appended at or after
    ``since_ms``) up to its end at call time, each read through the decode edge (refused
    records are yielded too, with their reason)."""
    c = consumer(kafka)
    try:
        ends = end_offsets(c, topic)
        starts = {p: OFFSET_BEGINNING for p in ends} if since_ms is None else \
            _offsets_at(c, topic, list(ends), since_ms)
        todo = {p for p, end in ends.items() if end > 0 and starts.get(p, -1) != -1}
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline or (stop and stop()):
                raise BusError(f"reading {topic} did not reach its end within {timeout}s")
            msg = c.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise BusError(f"error reading {topic}: {msg.error()}")
            rec = to_record(msg, trust, reader=reader)
            yield rec
            if rec.offset + 1 >= ends[rec.partition]:
                todo.discard(rec.partition)
    finally:
        c.close()


def _offsets_at(c: Consumer, topic: str, parts: list[int], at_ms: int) -> dict[int, int]:
    """The first offset of each partition appended at or after ``at_ms`` (-1: none)."""
    try:
        found = c.offsets_for_times([TopicPartition(topic, p, at_ms) for p in parts], timeout=10)
    except KafkaException as exc:
        raise BusError(f"cannot find the offsets of {topic} at {at_ms}: {exc}") from exc
    return {tp.partition: tp.offset for tp in found}
