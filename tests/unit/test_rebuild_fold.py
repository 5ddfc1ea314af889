"""Folding the grant topic (broker/adapters/rebuild.py): revocation markers survive a rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.adapters.bus import Record
from broker.adapters.rebuild import fold
from schemas.events import AgentRevoked, WireModel

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _records(*events: WireModel) -> list[Record]:
    return [Record("permbroker.grants", 0, n, 0, e, None, None) for n, e in enumerate(events)]


def _revoked(at: datetime, rule: str, quarantine_s: int | None) -> AgentRevoked:
    until = at + timedelta(seconds=quarantine_s) if quarantine_s else None
    return AgentRevoked(agent_id="a-1", revoked_at=at, reason="r", rule=rule,
                        cause_event_id=f"sig-{rule}", quarantined_until=until,
                        markers_until=(until or at) + timedelta(hours=2))


def test_a_later_revocation_without_quarantine_keeps_the_earlier_quarantine() -> None:
    """Anomaly (10 min quarantine), then a model change: the rebuilt markers keep the 10 min."""
    anomaly = _revoked(NOW, "revoke-on-behaviour-anomaly", 600)
    model_change = _revoked(NOW + timedelta(seconds=5), "revoke-on-model-change", None)
    for order in ((anomaly, model_change), (model_change, anomaly)):
        merged = fold(_records(*order), NOW).revocations["a-1"]
        assert merged.quarantined_until == NOW + timedelta(seconds=600)
        assert merged.rule == "revoke-on-behaviour-anomaly"
        assert merged.revoked_at == NOW + timedelta(seconds=5)
        assert merged.markers_until == anomaly.markers_until


def test_the_longest_quarantine_wins() -> None:
    """Two quarantines: the one that ends last is restored, with its rule."""
    short = _revoked(NOW + timedelta(seconds=10), "short", 60)
    long = _revoked(NOW, "long", 3600)
    merged = fold(_records(long, short), NOW).revocations["a-1"]
    assert merged.quarantined_until == NOW + timedelta(seconds=3600)
    assert merged.rule == "long"
