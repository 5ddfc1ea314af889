"""Figures read at scrape time from the grant view and Kafka: live grants by class and namespace,
quarantined agents, consumer lag per partition, the audit sealer's lag. Imports prometheus-client,
broker (adapters) and schemas.

A probe that cannot answer (Redis or Kafka unavailable) leaves its family empty and says so in
``permbroker_worker_probe_up``: a scrape never fails because a store is down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.adapters.audit.sealer import Sealer
from broker.adapters.kafka.lag import LagProbe, behind
from broker.adapters.redis.stats.census import Census, ClassOf
from broker.errors import BusError, StoreError
from schemas import topics


class SealerWatch:
    """Remembers the sealer the worker runs now (one per (re)start of it)."""

    def __init__(self, make: Callable[[], Sealer]) -> None:
        self._make = make
        self.current: Sealer | None = None

    def __call__(self) -> Sealer:
        self.current = self._make()
        return self.current


class ProbeCollector(Collector):
    """The scrape-time families (each probe's failure contained)."""

    def __init__(self, census: Census, lag: LagProbe, class_of: ClassOf,
                 inputs: Callable[[], Iterable[str]], sealer: SealerWatch | None) -> None:
        self._census, self._lag, self._class_of = census, lag, class_of
        self._inputs = inputs  # the topics the worker consumes (known once it is wired)
        self._sealer = sealer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("permbroker_worker_probe_up", "1 when a scrape-time probe "
                               "answered (grants, quarantine, consumer-lag, sealer-lag)",
                               labels=["probe"])
        for name, probe in (("grants", self._grants), ("quarantine", self._quarantined),
                            ("consumer-lag", self._consumer_lag),
                            ("sealer-lag", self._sealer_lag)):
            family, ok = probe()
            up.add_metric([name], 1 if ok else 0)
            yield family
        yield up

    def _grants(self) -> tuple[GaugeMetricFamily, bool]:
        family = GaugeMetricFamily("permbroker_worker_active_grants", "Live grants in the view, "
                                   "by agent class and namespace (a grant spanning namespaces "
                                   "counts in each)", labels=["agent_class", "namespace"])
        try:
            live = self._census.live_grants(self._class_of)
        except StoreError:
            return family, False
        for (agent_class, namespace), n in sorted(live.items()):
            family.add_metric([agent_class, namespace], n)
        return family, True

    def _quarantined(self) -> tuple[GaugeMetricFamily, bool]:
        family = GaugeMetricFamily("permbroker_worker_quarantined_agents",
                                   "Agents under quarantine now")
        try:
            family.add_metric([], self._census.quarantined())
        except StoreError:
            return family, False
        return family, True

    def _consumer_lag(self) -> tuple[GaugeMetricFamily, bool]:
        family = GaugeMetricFamily("permbroker_worker_consumer_lag", "Records between the "
                                   "workers' committed offset and the log end, per input "
                                   "partition", labels=["topic", "partition"])
        try:
            lag = self._lag.group_lag(sorted(self._inputs()))
        except BusError:
            return family, False
        for (topic, partition), n in sorted(lag.items()):
            family.add_metric([topic, str(partition)], n)
        return family, True

    def _sealer_lag(self) -> tuple[GaugeMetricFamily, bool]:
        family = GaugeMetricFamily("permbroker_worker_sealer_lag", "Raw audit records this "
                                   "worker's sealer has not sealed yet, per partition it seals",
                                   labels=["partition"])
        sealer = self._sealer.current if self._sealer else None
        if sealer is None:
            return family, self._sealer is None  # not sealing here: nothing is behind
        try:
            lag = behind(self._lag.high(topics.AUDIT_RAW.name), sealer.positions())
        except BusError:
            return family, False
        for partition, n in sorted(lag.items()):
            family.add_metric([str(partition)], n)
        return family, True
