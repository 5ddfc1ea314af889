"""How far behind the log end a consumer group and the audit sealer are. Imports confluent-kafka.

Runs in the metrics server's thread at scrape time: one metadata-only consumer (it never joins
its group: it only reads the group's committed offsets and the partitions' high watermarks).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaException, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import consumer, partitions
from broker.errors import BusError

TIMEOUT_S = 5.0


class LagProbe:
    """Committed offsets of ``group`` and high watermarks, read on demand."""

    def __init__(self, kafka: KafkaAccess, group: str) -> None:
        self._c = consumer(kafka, group=group, **{"enable.auto.commit": False})
        self._lock = threading.Lock()  # a confluent client is not shared across threads

    def close(self) -> None:
        """Close the client."""
        with self._lock:
            self._c.close()

    def high(self, topic: str) -> dict[int, int]:
        """partition -> high watermark of ``topic``."""
        with self._lock:
            return self._high(topic)

    def group_lag(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """(topic, partition) -> records between the group's committed offset and the log end
        (a partition the group never committed counts from its low watermark)."""
        out: dict[tuple[str, int], int] = {}
        with self._lock:
            for topic in topics:
                tps = [TopicPartition(topic, p) for p in partitions(self._c, topic, TIMEOUT_S)]
                try:
                    committed = self._c.committed(tps, timeout=TIMEOUT_S)
                    for tp in committed:
                        low, high = self._c.get_watermark_offsets(tp, timeout=TIMEOUT_S)
                        position = tp.offset if tp.offset >= 0 else low
                        out[(topic, tp.partition)] = max(high - position, 0)
                except KafkaException as exc:
                    raise BusError(f"cannot read the offsets of {topic}: {exc}") from exc
        return out

    def _high(self, topic: str) -> dict[int, int]:
        out = {}
        for p in partitions(self._c, topic, TIMEOUT_S):
            try:
                out[p] = self._c.get_watermark_offsets(TopicPartition(topic, p),
                                                       timeout=TIMEOUT_S)[1]
            except KafkaException as exc:
                raise BusError(f"cannot read the offsets of {topic}: {exc}") from exc
        return out


def behind(high: Mapping[int, int], positions: Mapping[int, int]) -> dict[int, int]:
    """partition -> records from ``positions`` (next offset to process) to the log end."""
    return {p: max(high.get(p, pos) - pos, 0) for p, pos in positions.items()}
