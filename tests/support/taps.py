"""A topic tap: collects every record appended to a topic after it was opened.

Imports broker, schemas, tests.support.waits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, consumer, end_offsets, to_record
from tests.support.waits import wait_until

T = TypeVar("T")


class Tap:
    """Collects every record appended to a topic after the tap was opened."""

    def __init__(self, kafka: KafkaAccess, topic: str) -> None:
        self.records: list[Record] = []
        self._c = consumer(kafka)
        ends = end_offsets(self._c, topic)
        self._c.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._c.poll(0.05)
            if msg is not None and not msg.error():
                with self._lock:
                    self.records.append(to_record(msg, None))  # a tap sees everything
        self._c.close()

    def events(self, kind: type[T], pred: Callable[[T], bool] = lambda _e: True) -> list[T]:
        """Decoded events of one type matching ``pred``."""
        with self._lock:
            return [r.event for r in self.records if isinstance(r.event, kind) and pred(r.event)]

    def last_offsets(self) -> dict[int, int]:
        """The highest offset read so far, per partition."""
        with self._lock:
            out: dict[int, int] = {}
            for r in self.records:
                out[r.partition] = max(out.get(r.partition, -1), r.offset)
            return out

    def wait_for(
        self, kind: type[T], pred: Callable[[T], bool], count: int = 1, timeout: float = 30.0
    ) -> list[T]:
        """Wait until at least ``count`` matching events arrived; fail with what was seen."""

        def enough() -> list[T]:
            found = self.events(kind, pred)
            return found if len(found) >= count else []

        try:
            return wait_until(enough, timeout, f"{count} {kind.__name__} event(s)")
        except AssertionError:
            found = self.events(kind, pred)
            raise AssertionError(
                f"expected {count} {kind.__name__} event(s), saw {len(found)} "
                f"within {timeout}s ({len(self.records)} records on the tap)"
            ) from None

    def close(self) -> None:
        """Stop tapping."""
        self._stop.set()
        self._thread.join(timeout=5)
