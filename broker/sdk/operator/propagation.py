"""Operator SDK: wait for the enforcement points to acknowledge revocations. Imports adapters, core.

Also imports schemas. ``AckWatcher`` follows the revocation-acks topic from ``SILENT_AFTER`` ago
(so it knows which enforcement points are alive: those that reported since) through the decode
edge: only acks and status reports signed by the enforcement point they name count. ``wait``
returns once every live point that reads the revoked agent's tenant's grants acknowledged every
given revocation (a view of another tenant's topics never sees it), or when its bound is
reached, with each point's first acknowledgement of each revocation and how long propagation
took.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.edge import Record, Trust
from broker.adapters.kafka.follow import Follower
from broker.delivery.propagation import SILENT_AFTER, Propagation
from schemas import topics
from schemas.events import EnforcementPointStatus, RevocationAcknowledged


class AckWatcher:
    """Collects signed revocation acks and the enforcement points that reported lately."""

    def __init__(self, kafka: KafkaAccess, *, trust: Trust) -> None:
        self._cond = threading.Condition()
        self._acks: dict[tuple[str, str], Propagation] = {}
        self._live: set[str] = set()
        self._topics: dict[str, str] = {}  # the grant topic each point said it reads
        since = datetime.now(UTC) - SILENT_AFTER
        self._follower = Follower(kafka, topics.REVOCATION_ACKS.name, self._on_record,
                                  trust=trust, reader="ack-watcher", name="permbroker-acks",
                                  start=since)

    def _on_record(self, record: Record) -> None:
        ev = record.event
        with self._cond:
            if isinstance(ev, (EnforcementPointStatus, RevocationAcknowledged)):
                self._live.add(ev.enforcement_point)
                self._topics[ev.enforcement_point] = ev.topic
            if isinstance(ev, RevocationAcknowledged):
                key = (ev.enforcement_point, ev.cause_event_id)
                if key not in self._acks:  # the first ack of a point counts
                    self._acks[key] = Propagation(ev.enforcement_point, ev.cause_event_id,
                                                  ev.agent_id, ev.revoked_at, ev.applied_at,
                                                  ev.replayed)
            self._cond.notify_all()

    def _found(self, causes: frozenset[str]) -> list[Propagation]:
        return sorted((p for (_n, c), p in self._acks.items() if c in causes),
                      key=lambda p: (p.enforcement_point, p.cause_event_id))

    def _reading(self, tenant: str) -> list[str]:
        return sorted(n for n in self._live if topics.carries_tenant(self._topics[n], tenant))

    def awaited(self, tenant: str = topics.DEFAULT_TENANT) -> list[str]:
        """The live points that see revocations of ``tenant``'s agents (sorted)."""
        with self._cond:
            return self._reading(tenant)

    def wait(self, causes: frozenset[str], timeout: float,
             tenant: str = topics.DEFAULT_TENANT) -> list[Propagation]:
        """The acks of ``causes`` (revocations of ``tenant``'s agents' grants, by cause event
        id): once every live point reading that tenant's grants acknowledged all of them
        (at least one), or after ``timeout`` seconds with what came."""
        deadline = time.monotonic() + timeout

        def complete() -> bool:
            acked = {(n, c) for (n, c) in self._acks if c in causes}
            points = self._reading(tenant)
            return bool(points) and all((n, c) in acked for n in points for c in causes)

        with self._cond:
            while not complete():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._found(causes)

    def close(self) -> None:
        """Stop following."""
        self._follower.close()

    def __enter__(self) -> AckWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
