"""Prometheus metrics of the API process. Imports prometheus-client, core, sdk.

One registry per app (so tests can build several). Revocation propagation is observed once per
(enforcement point, revocation), from the acknowledgements on the acks topic; the view's
freshness and the unconfirmed revocations are sampled at scrape time. Every history held here is
bounded by ``keep`` (``PERMBROKER_METRICS_HISTORY``): the oldest entries are forgotten first, so
no stream of acks, however long or hostile, grows the process.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from broker.delivery.bounded import Bounded
from broker.delivery.freshness import Freshness
from broker.delivery.propagation import RevocationStatus, fold_status
from schemas.events import AgentRevoked, EnforcementPointStatus, RevocationAcknowledged

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The API's metrics and the revocation/ack history they are computed from."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self.registry = CollectorRegistry()
        r = self.registry
        self.propagation = Histogram(
            "permbroker_revocation_propagation_seconds",
            "Time from a revoking signal's append to an enforcement point applying it",
            ["enforcement_point"], buckets=BUCKETS, registry=r)
        self.unconfirmed = Gauge(
            "permbroker_revocations_unconfirmed",
            "Revocations an enforcement point has not acknowledged", ["enforcement_point"],
            registry=r)
        self.checks = Counter("permbroker_checks_total", "Checks answered by this API's view",
                              ["outcome"], registry=r)
        self.requests = Counter("permbroker_api_requests_total",
                                "Agent and operator requests relayed to Kafka",
                                ["kind", "outcome"], registry=r)
        self.view_ready = Gauge("permbroker_view_ready", "1 when the grant view caught up",
                                registry=r)
        self.view_staleness = Gauge("permbroker_view_staleness_seconds",
                                    "Age of the grant view's freshness proof", registry=r)
        self.view_lag = Gauge("permbroker_view_lag_records",
                              "Records between the grant view and the log end", registry=r)
        self.view_mode = Gauge("permbroker_view_mode",
                               "1 for the mode the grant view is in: fresh, grace or fail-closed",
                               ["mode"], registry=r)
        self.view_grace_until = Gauge("permbroker_view_grace_until_seconds",
                                      "Epoch seconds the view's grace ends (0 when not in grace)",
                                      registry=r)
        self._lock = threading.Lock()
        self._revocations: deque[AgentRevoked] = deque(maxlen=keep)
        self._acks: deque[RevocationAcknowledged] = deque(maxlen=keep)
        self._statuses: Bounded[str, EnforcementPointStatus] = Bounded(keep)
        self._observed: Bounded[tuple[str, str], None] = Bounded(keep)

    def revoked(self, event: AgentRevoked) -> None:
        """A revocation seen on the grant topic."""
        with self._lock:
            self._revocations.append(event)

    def ack_event(self, event: RevocationAcknowledged | EnforcementPointStatus) -> None:
        """An acknowledgement or a status report from the acks topic."""
        with self._lock:
            if isinstance(event, EnforcementPointStatus):
                self._statuses.put(event.enforcement_point, event)
                return
            self._acks.append(event)
            key = (event.enforcement_point, event.cause_event_id)
            if key in self._observed or event.replayed:
                return  # a replay at a view's start is no live propagation time
            self._observed.put(key, None)
        seconds = (event.applied_at - event.revoked_at).total_seconds()
        self.propagation.labels(event.enforcement_point).observe(max(seconds, 0.0))

    def held(self) -> dict[str, int]:
        """How many entries each history holds now (each at most ``keep``)."""
        with self._lock:
            return {"revocations": len(self._revocations), "acks": len(self._acks),
                    "statuses": len(self._statuses), "observed": len(self._observed)}

    def status(self) -> RevocationStatus:
        """Revocations seen and every enforcement point's confirmations."""
        with self._lock:
            return fold_status(list(self._revocations), list(self._acks),
                               list(self._statuses.values()))

    def render(self, freshness: Freshness) -> bytes:
        """The exposition text, with the sampled gauges brought up to date."""
        self.view_ready.set(1 if freshness.ready else 0)
        self.view_staleness.set(freshness.staleness_s if freshness.staleness_s is not None
                                else float("inf"))
        self.view_lag.set(freshness.lag)
        for mode in ("fresh", "grace", "fail-closed"):
            self.view_mode.labels(mode).set(1 if freshness.mode == mode else 0)
        self.view_grace_until.set(freshness.grace_until or 0)
        for point in self.status().points:
            self.unconfirmed.labels(point.name).set(len(point.unconfirmed))
        return generate_latest(self.registry)


def now() -> datetime:
    """The current time (UTC)."""
    return datetime.now(UTC)
