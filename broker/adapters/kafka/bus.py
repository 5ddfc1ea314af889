"""Kafka access outside faust (SDKs, CLI, rebuild, demo) with confluent-kafka.

Imports schemas, codec.

Producers use the Java-compatible murmur2 partitioner so a key lands on the same partition as
when faust (aiokafka) produces it: one agent, one partition, whoever writes.
Every call here blocks; never call it from inside a faust agent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from broker.adapters.kafka.codec import Encoded, decode, encode
from broker.errors import BusError, WireError
from schemas.events import WireModel


def producer_config(bootstrap: str) -> dict[str, object]:
    """Settings every permbroker producer shares."""
    return {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 1,
    }


class Publisher:
    """Publishes wire models as CloudEvents and waits for the broker's acknowledgement."""

    def __init__(
        self,
        bootstrap: str,
        *,
        source: str,
        signer: Callable[[Encoded], Encoded] | None = None,
    ) -> None:
        self._producer = Producer(producer_config(bootstrap))
        self._source = source
        self._signer = signer  # adds the sender's ce_signature to every message it publishes

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
        if self._producer.flush(timeout) > 0:
            raise BusError(f"Kafka did not acknowledge the write to {topic} within {timeout}s")
        if errors:
            raise BusError(f"Kafka refused the write to {topic}: {errors[0]}")

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


def consumer(bootstrap: str, *, group: str | None = None, **extra: object) -> Consumer:
    """A consumer that never commits unless it is given a group (readers assign partitions)."""
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap,
        "group.id": group or f"permbroker-reader-{uuid.uuid4()}",
        "enable.auto.commit": bool(group),
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 10,
        "enable.partition.eof": False,
    }
    config.update(extra)
    return Consumer(config)


def partitions(c: Consumer, topic: str, timeout: float = 10.0) -> list[int]:
    """Partition ids of a topic."""
    try:
        meta = c.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"cannot read metadata of {topic}: {exc}") from exc
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        raise BusError(f"topic {topic} does not exist (run: permbroker stack up, or create topics)")
    return sorted(info.partitions)


def end_offsets(c: Consumer, topic: str, timeout: float = 10.0) -> dict[int, int]:
    """The current log end offset of every partition."""
    out = {}
    for p in partitions(c, topic, timeout):
        try:
            _low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        except KafkaException as exc:
            raise BusError(f"cannot read offsets of {topic}: {exc}") from exc
        out[p] = high
    return out


@dataclass(frozen=True)
class Record:
    """One message read back: where it came from, and the decoded event or the decode error."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    event: WireModel | None
    error: str | None
    raw: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


def to_record(msg: Message) -> Record:
    """Decode a consumed message without raising."""
    raw = msg.value()
    raw_headers = msg.headers() or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    headers = tuple((k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in items)
    key = msg.key()
    key_bytes = key.encode() if isinstance(key, str) else key
    try:
        event: WireModel | None = decode(key_bytes, raw, headers)
        error = None
    except WireError as exc:
        event, error = None, str(exc)
    _kind, ts = msg.timestamp()
    return Record(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, ts, event, error,
                  raw, key_bytes, headers)


def read_all(
    bootstrap: str, topic: str, *, timeout: float = 30.0, stop: Callable[[], bool] | None = None,
    since_ms: int | None = None,
) -> Iterator[Record]:
    """Every message of a topic from the beginning (or the first appended at or after
    ``since_ms``) up to its end at call time."""
    c = consumer(bootstrap)
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
            rec = to_record(msg)
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
