"""Following a topic in a thread: the one abstraction every view and watcher reads Kafka with.

Imports confluent-kafka, access, bus, edge. Each message goes through the decode edge
(``edge.read``, with the reader's trust): accepted records are handed to ``apply`` in offset
order, refused ones (counted by the edge) to ``on_refused`` if given. Nothing a record holds
stops the thread: an exception from a callback is counted as a refusal (``apply-failed``) and
logged, and the next record is read. The thread starts at the beginning of the topic, at its end
(what is appended from now on), at a time or at the last n records of every partition;
``wait_ready`` returns once what the topic held at start has been read (its end known from the
consumer's end-of-partition events, so a topic written in transactions, whose last offset is a
commit marker, is read to its end too), ``sync`` once what it holds now has. A follower given
``only_keys`` passes over a message keyed otherwise before decoding it: a record about someone
else is never applied, so it need not be verified (an agent's watcher on a topic of every
agent's answers). ``set_paused`` stops fetching (in the thread, as librdkafka wants),
``on_tick`` runs in the thread between polls, and ``ends`` reads the log end of every partition,
so a reader that proves its own freshness (the grant view) needs no consumer loop of its own.

What the consumer reports goes through ``ReadErrors``: each error is logged once (until the
follower reads again), and Kafka's refusal to let the client read the topic (its READ withdrawn
while it runs) is kept in ``errors.refused`` for whoever waits on the follower to say why.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

from aiokafka.partitioner import murmur2
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import consumer, partitions
from broker.adapters.kafka.edge import Record, Trust, read_message
from broker.errors import BusError

log = logging.getLogger("permbroker.follow")
# Where a follower begins: the start of the topic, its end, a time, or the last n records of
# every partition (an int).
Start = Literal["beginning", "end"] | datetime | int
# Kafka refuses the client: no retry helps until its credentials or ACLs change.
REFUSALS = frozenset({
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
    KafkaError._AUTHENTICATION})
MAX_LOGGED = 32


class ReadErrors:
    """The errors a consumer of ``topic`` reported. Each distinct one is logged once until the
    consumer reads a record again (a refusal at ERROR, anything else at WARNING); ``refused``
    says why the client cannot read the topic at all, '' while it can."""

    def __init__(self, topic: str, user: str, reader: str) -> None:
        self.topic, self.user, self.reader = topic, user or "the anonymous user", reader
        self.refused = ""
        self._logged: set[str] = set()

    def saw(self, err: KafkaError) -> None:
        """One error the consumer reported (end-of-partition notices are not errors)."""
        if err.code() == KafkaError._PARTITION_EOF:
            return
        text = f"{err.str()} ({err.name()})"
        if err.code() in REFUSALS:
            self.refused = f"Kafka refuses to let {self.user} read {self.topic}: {text}"
        if text in self._logged or len(self._logged) >= MAX_LOGGED:
            return
        self._logged.add(text)
        if err.code() in REFUSALS:
            log.error("%s: %s; nothing more is read from it until the client's ACLs allow it "
                      "(permbroker kafka acls apply; a client started before the tenants "
                      "changed reads the wrong topic: restart it)", self.reader, self.refused)
        else:
            log.warning("%s: error reading %s: %s", self.reader, self.topic, text)

    def read(self) -> None:
        """The consumer read a record: whatever was refused is over."""
        if self._logged:
            if self.refused:
                log.warning("%s: reading %s again", self.reader, self.topic)
            self.refused = ""
            self._logged.clear()


class Follower:
    """A daemon thread reading ``topic`` through the decode edge, in offset order."""

    def __init__(self, kafka: KafkaAccess, topic: str, apply: Callable[[Record], None], *,
                 trust: Trust | None, reader: str, name: str, start: Start = "beginning",
                 on_refused: Callable[[Record], None] | None = None,
                 only_keys: frozenset[bytes] | None = None, signed_by: str | None = None,
                 on_tick: Callable[[], None] | None = None, autostart: bool = True) -> None:
        """``only_keys``: apply only records with one of these keys (or none), and read only
        the partitions those keys land on (every producer here partitions by murmur2 of the
        key, as Kafka's Java clients do), so an agent's answers cost it none of the others'.
        ``signed_by``: the role whose signature a record must carry (the edge's check).
        ``autostart=False``: the thread starts at ``start()`` (once the caller is ready for its
        first record); ``started_ends`` are the log ends read before it."""
        self.topic = topic
        self._only = only_keys
        self.reader = reader
        self._apply = apply
        self._on_refused = on_refused
        self._trust = trust
        self._signed_by = signed_by
        self._on_tick = on_tick
        self._want_paused = self._paused = False
        self.errors = ReadErrors(topic, kafka.username, reader)
        # End-of-partition events tell where a partition ends past its last record: a topic
        # written in transactions ends with a commit marker no record is read at.
        eof: dict[str, object] = {"enable.partition.eof": True}
        self._consumer = consumer(kafka, group=None, **eof)
        self._meta = consumer(kafka)
        self._meta_lock = threading.Lock()
        self._parts = partitions(self._consumer, topic, user=kafka.username)
        if only_keys:
            self._parts = sorted({key_partition(k, self._parts) for k in only_keys})
        self._cond = threading.Condition()
        self._target = self.ends()
        self._pos = self._assign(start)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        if autostart:
            self._thread.start()

    @property
    def started_ends(self) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of every partition read, as they were before the start."""
        return dict(self._target)

    def start(self) -> None:
        """Start the thread (a follower made with ``autostart=False``)."""
        self._thread.start()

    def _assign(self, start: Start) -> dict[int, int]:
        """Assign every partition from ``start``; the position each begins at."""
        if start == "end":
            # The ends read above, as exact offsets: a logical OFFSET_END would be resolved only
            # at the first fetch, after an answer to what the caller publishes next may be in.
            pos = {p: high for p, (_low, high) in self._target.items()}
            offsets = [TopicPartition(self.topic, p, o) for p, o in pos.items()]
        elif start == "beginning":
            pos = dict.fromkeys(self._parts, 0)
            offsets = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._parts]
        elif isinstance(start, int):
            pos = {p: max(low, high - start) for p, (low, high) in self._target.items()}
            offsets = [TopicPartition(self.topic, p, o) for p, o in pos.items()]
        else:
            stamp = int(start.timestamp() * 1000)
            try:
                found = self._consumer.offsets_for_times(
                    [TopicPartition(self.topic, p, stamp) for p in self._parts], timeout=10)
            except KafkaException as exc:
                raise BusError(f"cannot look up offsets of {self.topic} by time: {exc}") from exc
            pos = {tp.partition: tp.offset if tp.offset >= 0 else self._target[tp.partition][1]
                   for tp in found}
            offsets = [TopicPartition(self.topic, p, o) for p, o in pos.items()]
        self._consumer.assign(offsets)
        return pos

    def ends(self, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of every partition read, now, asked of the broker (any
        thread; BusError when Kafka does not answer within ``timeout`` per partition)."""
        out = {}
        with self._meta_lock:
            for p in self._parts:
                try:
                    out[p] = self._meta.get_watermark_offsets(TopicPartition(self.topic, p),
                                                              timeout=timeout, cached=False)
                except KafkaException as exc:
                    raise BusError(f"cannot read offsets of {self.topic}: "
                                   f"{exc.args[0] if exc.args else exc}") from exc
        return out

    def _caught_up(self, ends: dict[int, tuple[int, int]]) -> bool:
        return all(low >= high or self._pos[p] >= high for p, (low, high) in ends.items())

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._step()
                except Exception:
                    log.exception("%s: error following %s; going on", self.reader, self.topic)
                    time.sleep(0.1)
        finally:
            self._consumer.close()
            with self._meta_lock:
                self._meta.close()

    def _step(self) -> None:
        if self._want_paused != self._paused:
            self._switch_pause()
        if self._on_tick is not None:
            self._on_tick()
        msg = self._consumer.poll(0.05)
        if msg is not None and (err := msg.error()) is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._reached(msg.partition() or 0, msg.offset() or 0)
            else:
                self.errors.saw(err)
        elif msg is not None:
            self.errors.read()
            key = msg.key()
            if self._only is None or not key or key in self._only:
                self._handle(read_message(msg, trust=self._trust, reader=self.reader,
                                          signed_by=self._signed_by))
            with self._cond:
                self._pos[msg.partition() or 0] = (msg.offset() or 0) + 1
                self._cond.notify_all()
        if not self._ready.is_set():
            with self._cond:
                if self._caught_up(self._target):
                    self._ready.set()

    def _reached(self, partition: int, end: int) -> None:
        """The consumer is at the end of ``partition``: it has read everything before ``end``."""
        with self._cond:
            if end > self._pos.get(partition, 0):
                self._pos[partition] = end
                self._cond.notify_all()

    def _handle(self, record: Record) -> None:
        """Hand the record over; an exception of the callback is a refusal, never fatal."""
        try:
            if record.event is not None:
                self._apply(record)
            elif self._on_refused is not None:
                self._on_refused(record)
        except Exception as exc:  # noqa: BLE001 - nothing a record holds may stop the thread
            failed = dataclasses.replace(record, event=None, reason="apply-failed",
                                         error=f"{type(exc).__name__}: {str(exc)[:200]}")
            if self._trust is not None:
                self._trust.refusals.add(self.reader, failed)
            log.warning("%s could not apply %s: %s", self.reader, record.origin, failed.error)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until what the topic held at start has been read."""
        return self._ready.wait(timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until what the topic holds now has been read; False at the deadline (at once
        when called from the following thread itself, which cannot wait for its own progress)."""
        if threading.current_thread() is self._thread:
            return False
        ends = self.ends()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._caught_up(ends):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def paused(self) -> bool:
        """Whether fetching is paused."""
        return self._paused

    def _switch_pause(self) -> None:
        """Pause or resume fetching, in the consumer's own thread (librdkafka wants it there)."""
        assignment = self._consumer.assignment()
        if self._want_paused:
            self._consumer.pause(assignment)
        else:
            self._consumer.resume(assignment)
        with self._cond:
            self._paused = self._want_paused
            self._cond.notify_all()

    def set_paused(self, paused: bool, timeout: float = 5.0) -> None:
        """Stop (or resume) fetching; BusError if the thread has not within ``timeout``."""
        self._want_paused = paused
        with self._cond:
            if not self._cond.wait_for(lambda: self._paused == paused, timeout):
                raise BusError(f"{self.reader} did not {'pause' if paused else 'resume'} "
                               f"reading {self.topic} within {timeout:g}s")

    def close(self, timeout: float = 5.0) -> None:
        """Stop following (the thread closes its consumers)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
        elif not self._thread.ident:  # never started: nobody else closes them
            self._consumer.close()
            with self._meta_lock:
                self._meta.close()


def key_partition(key: bytes, parts: list[int]) -> int:
    """The partition a keyed record lands on: Kafka's default (Java) partitioner, which
    aiokafka's (the worker's) and confluent-kafka's ``murmur2_random`` (bus.py) both follow."""
    return parts[(int(murmur2(key)) & 0x7FFFFFFF) % len(parts)]
