"""Replay of baselines (pure): what an agent could do at T from the audited statements."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.audit.baselines import baselines_as_of
from broker.identity.baseline import baseline_audit
from schemas.events import AuditRecord, BaselineEntitlement

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
READ = "payments:transactions.read"


def statement(revision: int, status: str, at: datetime) -> AuditRecord:
    event = BaselineEntitlement(
        entitlement_id=f"b-{revision}", agent_id="a-1", status=status,
        scopes=(READ,) if status == "active" else (), agent_class="fraud-detection",
        registry_revision=revision, policy_revision="p", reason=f"rev {revision}",
        cause_id=f"c-{revision}", effective_at=at)
    return baseline_audit(event, at)


def quarantine(at: datetime, seconds: int) -> AuditRecord:
    return AuditRecord(audit_id="q-1", kind="risk.observed", agent_id="a-1", occurred_at=at,
                       subject_id="sig-1", outcome="revoked", rules=("revoke-on-rate-spike",),
                       inputs={"quarantine_s": seconds})


def test_the_baseline_held_at_each_instant_follows_its_statements() -> None:
    """Entitled from registration, none while suspended, again after resume; a restart's
    re-announcement of an older revision does not bring back a suspended baseline."""
    records = [statement(1, "active", T0), statement(2, "withdrawn", T0 + timedelta(hours=1)),
               statement(1, "active", T0 + timedelta(hours=2)),  # a worker a moment behind
               statement(3, "active", T0 + timedelta(hours=3))]
    held = baselines_as_of(records, T0 + timedelta(minutes=30))
    assert [(b.agent_id, b.scopes, b.registry_revision) for b in held] == [("a-1", (READ,), 1)]
    assert baselines_as_of(records, T0 + timedelta(hours=2, minutes=30)) == []
    assert baselines_as_of(records, T0 - timedelta(seconds=1)) == []
    assert baselines_as_of(records, T0 + timedelta(hours=4))[0].registry_revision == 3


def test_a_quarantine_withdraws_the_baseline_for_its_length() -> None:
    """A revocation with a 10-minute quarantine: no baseline during it, back after."""
    records = [statement(1, "active", T0), quarantine(T0 + timedelta(minutes=5), 600)]
    assert baselines_as_of(records, T0 + timedelta(minutes=10)) == []
    assert baselines_as_of(records, T0 + timedelta(minutes=16))[0].agent_id == "a-1"
