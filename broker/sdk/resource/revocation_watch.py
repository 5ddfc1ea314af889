"""Proof that the workers have processed every revocation signal (risk topic) appended so far.

Imports adapters (bus), core (freshness) and schemas. A resource view that follows only the grant
topic cannot tell that a revocation is stuck upstream: when Redis is down the workers cannot
process a risk signal, so no ``agent.revoked`` comes and the view would go on allowing. With a
watch, the view is proven current as of ``t`` only when, having asked Kafka at ``t`` for the risk
topic's log ends, the workers' consumer group has committed past them; while revocations wait
unprocessed its staleness grows past the bound and every check is denied (fail closed).
"""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import KafkaException, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import consumer, partitions
from broker.delivery.freshness import FreshnessTracker
from broker.errors import BusError
from schemas import topics


class RevocationWatch:
    """Tracks the workers' committed position on the risk topic against its log ends."""

    def __init__(self, kafka: KafkaAccess, group: str, clock: Callable[[], float],
                 timeout_s: float = 1.0) -> None:
        self.group = group
        self.topic = topics.RISK.name
        self._timeout = timeout_s
        # A handle in the workers' group that never subscribes: it only reads committed offsets.
        self._c = consumer(kafka, group=group, **{"enable.auto.commit": False})
        try:
            self._parts = partitions(self._c, self.topic)
        except BusError:
            self._c.close()
            raise
        self.tracker = FreshnessTracker(self._parts, clock)
        self._clock = clock

    def probe(self) -> None:
        """Ask for the log ends and the group's commits; record what is proven."""
        asked = self._clock()
        try:
            tps = [TopicPartition(self.topic, p) for p in self._parts]
            ends = {p: self._c.get_watermark_offsets(tp, timeout=self._timeout, cached=False)
                    for p, tp in zip(self._parts, tps, strict=True)}
            committed = self._c.committed(tps, timeout=self._timeout)
        except KafkaException as exc:
            self.tracker.failed(f"cannot read the workers' progress on {self.topic}: "
                                f"{exc.args[0] if exc.args else exc}")
            return
        for tp in committed:
            low, high = ends[tp.partition]
            self.tracker.start_at(tp.partition, low)  # nothing before the log start is owed
            if tp.offset > 0:
                self.tracker.applied(tp.partition, tp.offset - 1)
            self.tracker.probed(tp.partition, high, asked)
        if not self.tracker.ready() or self.tracker.lag():
            self.tracker.problem = (f"revocation signals on {self.topic} not yet processed by "
                                    f"the workers ({self.group}): {self.tracker.lag()} pending")

    def close(self) -> None:
        """Close the handle (it never joined the group, so no rebalance)."""
        self._c.close()
