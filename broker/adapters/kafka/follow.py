"""Follow a (compacted) topic from its beginning in a thread; know when the view is current.

Imports confluent-kafka, bus, errors. Blocking: run ``sync`` in a thread from async code.

``wait_ready`` returns once everything that was in the topic at start has been applied;
``sync`` once everything in it *now* has been (read-your-writes for a writer that just had its
write acknowledged). Both have deadlines and report False rather than guess.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, consumer, partitions, to_record
from broker.errors import BusError


class Follower:
    """A daemon thread applying every record of ``topic`` to ``apply``, in offset order."""

    def __init__(self, kafka: KafkaAccess, topic: str, apply: Callable[[Record], None], *,
                 name: str) -> None:
        self.topic = topic
        self._apply = apply
        self._consumer = consumer(kafka)
        self._meta = consumer(kafka)
        self._meta_lock = threading.Lock()
        self._parts = partitions(self._consumer, topic)
        self._pos = dict.fromkeys(self._parts, 0)
        self._cond = threading.Condition()
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self._parts])
        self._target = self._ends()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _ends(self) -> dict[int, tuple[int, int]]:
        """(low, high) watermarks of every partition, now."""
        out = {}
        with self._meta_lock:
            for p in self._parts:
                try:
                    out[p] = self._meta.get_watermark_offsets(TopicPartition(self.topic, p),
                                                              timeout=5)
                except KafkaException as exc:
                    raise BusError(f"cannot read offsets of {self.topic}: {exc}") from exc
        return out

    def _caught_up(self, ends: dict[int, tuple[int, int]]) -> bool:
        return all(low >= high or self._pos[p] >= high for p, (low, high) in ends.items())

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is not None and not msg.error():
                record = to_record(msg)
                self._apply(record)
                with self._cond:
                    self._pos[record.partition] = record.offset + 1
                    self._cond.notify_all()
            if not self._ready.is_set():
                with self._cond:
                    if self._caught_up(self._target):
                        self._ready.set()
        self._consumer.close()
        with self._meta_lock:
            self._meta.close()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until what the topic held at start has been applied."""
        return self._ready.wait(timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until what the topic holds now has been applied; False at the deadline."""
        ends = self._ends()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._caught_up(ends):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        """Stop following."""
        self._stop.set()
        self._thread.join(timeout=5)
