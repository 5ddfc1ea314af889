"""The API's watchers hold at most their configured answers, whatever their topics carry."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker.config import Settings
from broker.errors import DecisionTimeout
from broker.sdk.agent.client import DecisionWatcher
from broker.sdk.operator.client import AuditWatcher
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided

pytestmark = pytest.mark.integration
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def decided(n: int) -> EscalationDecided:
    return EscalationDecided(
        decision_id=f"dec-{n}", request_id=f"req-{n}", agent_id=f"agent-{n % 1000}",
        outcome="denied", policy_revision="sha256:00", decided_at=NOW)


def test_the_decision_watcher_holds_at_most_its_bound_after_100000_foreign_decisions(
    settings: Settings,
) -> None:
    """100,000 decisions nobody waits for leave at most ``keep`` held; the newest is still
    handed to a caller that asks for it late, the oldest are gone."""
    watcher = DecisionWatcher(role_access(settings, topics.AGENT), keep=1000)
    try:
        for n in range(100_000):
            watcher.take(decided(n))
        assert watcher.held() == 1000
        assert watcher.wait("req-99999", timeout=1).decision_id == "dec-99999"
        assert watcher.held() == 999
        with pytest.raises(DecisionTimeout):
            watcher.wait("req-0", timeout=0.05)  # dropped long ago: never held again
    finally:
        watcher.close()


def test_the_audit_watcher_holds_at_most_its_bound_after_100000_foreign_records(
    settings: Settings,
) -> None:
    """100,000 risk audit records nobody waits for leave at most ``keep`` held; the newest is
    still handed over."""
    watcher = AuditWatcher(role_access(settings, topics.OPERATOR), keep=1000)
    try:
        for n in range(100_000):
            watcher.take(AuditRecord(audit_id=f"audit-{n}", kind="risk.observed", agent_id=None,
                                     occurred_at=NOW, subject_id=f"sig-{n}", outcome="noted"))
        assert watcher.held() == 1000
        assert watcher.wait("sig-99999", timeout=1).audit_id == "audit-99999"
        with pytest.raises(DecisionTimeout):
            watcher.wait("sig-0", timeout=0.05)
    finally:
        watcher.close()
