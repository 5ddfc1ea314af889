"""The decisions feed's latency: from Kafka's append of the request to the decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.api.console.data import latency_ms
from schemas.events import AuditRecord

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def record(kind: str = "escalation.decided", **inputs: object) -> AuditRecord:
    return AuditRecord(audit_id="audit-1", kind=kind, agent_id="fraud-detector-7",
                       occurred_at=T0 + timedelta(milliseconds=37.5), subject_id="req-1",
                       outcome="granted", inputs=inputs)


def test_the_latency_runs_from_the_append_to_the_decision() -> None:
    assert latency_ms(record(received_at=T0.isoformat())) == 37.5


def test_no_latency_without_an_append_time_or_for_other_kinds() -> None:
    assert latency_ms(record()) is None
    assert latency_ms(record(received_at="not a time")) is None
    assert latency_ms(record("identity.rejected", received_at=T0.isoformat())) is None
