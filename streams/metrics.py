"""Prometheus metrics of a worker: its counters, served over HTTP. Imports prometheus_client.

``PERMBROKER_METRICS_PORT`` (default 9464; 0 = off) serves ``/metrics`` on 127.0.0.1 with the
decision figures (streams/telemetry/figures.py), the scrape-time probes
(streams/telemetry/probes.py), ``permbroker_worker_identity_rejections_total`` by rule, and
``permbroker_worker_events_total``
labelled by what happened (decided_granted, dead_lettered, fenced, rate_limited, ...),
``permbroker_worker_partitions`` (the input partitions the worker currently owns),
``permbroker_worker_waiting_seconds`` (a partition held up by a retry: for how long, at which
step, why) and ``permbroker_worker_ready`` (1 once the worker takes messages and no partition
has waited longer than ``UNREADY_AFTER_S``), its readiness signal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.worker import WorkerContext

log = logging.getLogger("permbroker.worker")

UNREADY_AFTER_S = 5.0
REJECTED = "rejected_"  # the identity gate's counters: rejected_<rule>


class _WorkerCollector(Collector):
    """Reads the worker's counters at scrape time (no second bookkeeping to drift)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily(
            "permbroker_worker_events", "What the worker did, by kind", labels=["kind"]
        )
        rejections = CounterMetricFamily(
            "permbroker_worker_identity_rejections", "Events the identity gate refused, by rule",
            labels=["rule"])
        for kind, value in sorted(self._ctx.counters.items()):
            events.add_metric([kind], value)
            if kind.startswith(REJECTED):
                rejections.add_metric([kind.removeprefix(REJECTED)], value)
        yield events
        yield rejections
        owned = GaugeMetricFamily("permbroker_worker_partitions", "Input partitions owned")
        owned.add_metric([], len(self._ctx.epochs))
        yield owned
        yield from self._waits()

    def _waits(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        waiting = GaugeMetricFamily(
            "permbroker_worker_waiting_seconds", "How long a partition has waited for a retry "
            "(Redis or Kafka unavailable, a revocation not done yet), at which step, why",
            labels=["topic", "partition", "step", "reason"])
        longest = 0.0
        for w in self._ctx.waits.partitions():
            waited = now - w.since
            longest = max(longest, waited)
            waiting.add_metric([w.topic, str(w.partition), w.step, w.reason], waited)
        yield waiting
        ready = GaugeMetricFamily("permbroker_worker_ready", "1 when the worker takes messages "
                                  "and no partition waits longer than "
                                  f"{UNREADY_AFTER_S:g}s")
        ready.add_metric([], 1 if self._ctx.ready.is_set() and longest <= UNREADY_AFTER_S else 0)
        yield ready


class _Registered(Collector):
    """Another registry's metrics (the context's figures), served with these."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


def serve_metrics(ctx: WorkerContext, port: int) -> CollectorRegistry | None:
    """Serve the worker's metrics on 127.0.0.1:``port`` (nothing when port is 0, or when the
    port is taken: logged, the worker decides on without them)."""
    if not port:
        return None
    registry = CollectorRegistry()
    registry.register(_WorkerCollector(ctx))
    registry.register(_Registered(ctx.figures.registry))
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:
        log.error("not serving metrics: port %d: %s", port, exc)
        return None
    log.info("metrics on http://127.0.0.1:%d/metrics", port)
    return registry
