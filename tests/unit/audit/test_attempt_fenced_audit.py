"""The audit record that voids a decision attempt refused by a newer owner's fence."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.audit.records import ATTEMPT_FENCED, attempt_fenced_audit
from schemas.events import AuditRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _attempt() -> AuditRecord:
    return AuditRecord(audit_id="audit-1", kind="escalation.decided", agent_id="agent-a",
                       occurred_at=NOW, subject_id="req-1", outcome="granted",
                       policy_revision="rev", inputs={"fence_epoch": 5, "attempt": 0})


def test_voids_the_attempt_by_id_and_names_both_epochs() -> None:
    """Same agent and request; says which attempt never took effect, and why."""
    record = attempt_fenced_audit(_attempt(), "7", NOW)
    assert record.kind == ATTEMPT_FENCED and record.outcome == "fenced"
    assert (record.agent_id, record.subject_id) == ("agent-a", "req-1")
    assert record.inputs == {"voided_audit_id": "audit-1", "fence_epoch": 5, "owner_epoch": "7"}
    assert "epoch 5" in record.reasons[0] and "epoch 7" in record.reasons[0]


def test_its_id_is_derived_from_the_attempt() -> None:
    """A redelivered refusal of the same attempt gets the same audit id (idempotent)."""
    assert attempt_fenced_audit(_attempt(), "7", NOW).audit_id == attempt_fenced_audit(
        _attempt(), "9", NOW).audit_id
