"""The API's metrics hold at most their configured history, whatever the acks topic carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.api.metrics import Metrics
from schemas.events import AgentRevoked, EnforcementPointStatus, RevocationAcknowledged

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
KEEP = 500
COUNT = "permbroker_revocation_propagation_seconds_count"


def ack(n: int) -> RevocationAcknowledged:
    return RevocationAcknowledged(
        ack_id=f"ack-{n}", enforcement_point="point-1", agent_id=f"agent-{n}",
        cause_event_id=f"cause-{n}", revoked_at=NOW, applied_at=NOW + timedelta(seconds=1),
        topic="permbroker.grants", partition=0, offset=n)


def observed(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value(COUNT, {"enforcement_point": "point-1"}) or 0.0


def test_metrics_hold_at_most_their_bound_after_100000_foreign_acks() -> None:
    """100,000 acks of distinct revocations, 10,000 status reports of distinct points and
    10,000 revocations leave every history at its bound; the newest acks are still
    remembered (a repeat is not observed twice), the forgotten oldest are not."""
    metrics = Metrics(keep=KEEP)
    for n in range(100_000):
        metrics.ack_event(ack(n))
        if n % 10 == 0:
            metrics.ack_event(EnforcementPointStatus(
                enforcement_point=f"point-{n}", topic="permbroker.grants", ready=True,
                started_at=NOW, reported_at=NOW))
            metrics.revoked(AgentRevoked(
                agent_id=f"agent-{n}", revoked_at=NOW, reason="r", rule="r",
                cause_event_id=f"cause-{n}", markers_until=NOW + timedelta(hours=1)))
    assert metrics.held() == {"revocations": KEEP, "acks": KEEP, "statuses": KEEP,
                              "observed": KEEP}
    assert observed(metrics) == 100_000
    metrics.ack_event(ack(99_999))
    assert observed(metrics) == 100_000  # remembered: one propagation time per revocation
    metrics.ack_event(ack(0))
    assert observed(metrics) == 100_001  # forgotten: the price of a bounded memory
    assert metrics.held()["observed"] == KEEP
