"""Operator SDK: wait for the enforcement points to acknowledge revocations. Imports adapters, core.

Also imports schemas. ``AckWatcher`` follows the revocation-acks topic from ``SILENT_AFTER`` ago
(so it knows which enforcement points are alive: those that reported since) through the decode
edge: only acks and status reports signed by the enforcement point they name count. ``wait``
returns once every live point acknowledged every given revocation, or when its bound is reached,
with each point's first acknowledgement of each revocation and how long propagation took.
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
        since = datetime.now(UTC) - SILENT_AFTER
        self._follower = Follower(kafka, topics.REVOCATION_ACKS.name, self._on_record,
                                  trust=trust, reader="ack-watcher", name="permbroker-acks",
                                  start=since)

    def _on_record(self, record: Record) -> None:
        ev = record.event
        with self._cond:
            if isinstance(ev, EnforcementPointStatus):
                self._live.add(ev.enforcement_point)
            elif isinstance(ev, RevocationAcknowledged):
                self._live.add(ev.enforcement_point)
                key = (ev.enforcement_point, ev.cause_event_id)
                if key not in self._acks:  # the first ack of a point counts
                    self._acks[key] = Propagation(ev.enforcement_point, ev.cause_event_id,
                                                  ev.agent_id, ev.revoked_at, ev.applied_at,
                                                  ev.replayed)
            else:
                return
            self._cond.notify_all()

    def _found(self, causes: frozenset[str]) -> list[Propagation]:
        return sorted((p for (_n, c), p in self._acks.items() if c in causes),
                      key=lambda p: (p.enforcement_point, p.cause_event_id))

    def wait(self, causes: frozenset[str], timeout: float) -> list[Propagation]:
        """The acks of ``causes`` (revocations' cause event ids): once every live point
        acknowledged all of them, or after ``timeout`` seconds with what came."""
        deadline = time.monotonic() + timeout

        def complete() -> bool:
            acked = {(n, c) for (n, c) in self._acks if c in causes}
            return bool(self._live) and all((n, c) in acked for n in self._live for c in causes)

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
