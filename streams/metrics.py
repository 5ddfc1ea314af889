"""Prometheus metrics of a worker: its counters, served over HTTP. Imports prometheus_client.

``PERMBROKER_METRICS_PORT`` (0 = off) serves ``/metrics`` with ``permbroker_worker_events_total``
labelled by what happened (decided_granted, dead_lettered, fenced, rate_limited, ...), and
``permbroker_worker_partitions`` (the input partitions the worker currently owns).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from streams.worker import WorkerContext


class _WorkerCollector(Collector):
    """Reads the worker's counters at scrape time (no second bookkeeping to drift)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily(
            "permbroker_worker_events", "What the worker did, by kind", labels=["kind"]
        )
        for kind, value in sorted(self._ctx.counters.items()):
            events.add_metric([kind], value)
        yield events
        owned = GaugeMetricFamily("permbroker_worker_partitions", "Input partitions owned")
        owned.add_metric([], len(self._ctx.epochs))
        yield owned


def serve_metrics(ctx: WorkerContext, port: int) -> CollectorRegistry | None:
    """Serve the worker's metrics on 127.0.0.1:``port`` (nothing when port is 0)."""
    if not port:
        return None
    registry = CollectorRegistry()
    registry.register(_WorkerCollector(ctx))
    start_http_server(port, addr="127.0.0.1", registry=registry)
    return registry
