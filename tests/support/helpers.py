"""Test helpers for integration tests: a topic tap, request builders, waits.

Imports broker, schemas.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from confluent_kafka import TopicPartition

from broker.adapters.kafka.bus import Record, consumer, end_offsets, to_record
from schemas.events import EscalationRequested, RiskObserved, WireModel

T = TypeVar("T")


class Tap:
    """Collects every record appended to a topic after the tap was opened."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[Record] = []
        self._c = consumer(bootstrap)
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
                    self.records.append(to_record(msg))
        self._c.close()

    def events(self, kind: type[T], pred: Callable[[T], bool] = lambda _e: True) -> list[T]:
        """Decoded events of one type matching ``pred``."""
        with self._lock:
            return [r.event for r in self.records if isinstance(r.event, kind) and pred(r.event)]

    def wait_for(
        self, kind: type[T], pred: Callable[[T], bool], count: int = 1, timeout: float = 30.0
    ) -> list[T]:
        """Wait until at least ``count`` matching events arrived; fail with what was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(kind, pred)
            if len(found) >= count:
                return found
            time.sleep(0.02)
        found = self.events(kind, pred)
        raise AssertionError(
            f"expected {count} {kind.__name__} event(s), saw {len(found)} "
            f"within {timeout}s ({len(self.records)} records on the tap)"
        )

    def close(self) -> None:
        """Stop tapping."""
        self._stop.set()
        self._thread.join(timeout=5)


def wait_until(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Wait for ``pred()`` with a deadline (no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} did not hold within {timeout}s")


def fraud_request(agent_id: str, **overrides: object) -> EscalationRequested:
    """A request the fraud policy grants (freeze + PII on two accounts)."""
    fields: dict[str, object] = {
        "request_id": f"req-{uuid.uuid4()}",
        "agent_id": agent_id,
        "scopes": ("payments:accounts.freeze", "crm:customer.pii.read"),
        "resources": ("acct-1", "acct-2"),
        "duration_s": 900,
        "reason": "fraud pattern",
        "confidence": 0.95,
        "risk_score": 0.93,
        "requested_at": datetime.now(UTC),
    }
    fields.update(overrides)
    return EscalationRequested.model_validate(fields)


def anomaly(agent_id: str, severity: float = 0.95) -> RiskObserved:
    """A behaviour anomaly about ``agent_id`` that the fraud policy revokes on."""
    return RiskObserved(
        signal_id=f"sig-{uuid.uuid4()}",
        subject_agent_id=agent_id,
        kind="behaviour_anomaly",
        severity=severity,
        source="test-monitor",
        detail="out of pattern",
        observed_at=datetime.now(UTC),
    )


def ids(events: list[WireModel], attr: str) -> set[str]:
    """The set of one attribute over events."""
    return {str(getattr(e, attr)) for e in events}
