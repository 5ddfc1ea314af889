"""Degraded mode (pure): when grace applies, how long, and what a view's freshness then says."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from broker.delivery.freshness import Freshness, FreshnessTracker, grace_end
from schemas.events import RoutingAnnounced


def test_grace_runs_from_the_loss_of_freshness_for_its_bound() -> None:
    """Loss = last proof + staleness bound; grace ends the grace bound after that."""
    assert grace_end(100.0, 5.0, 60.0, unreachable=True, lag=0) == 165.0


def test_no_grace_without_a_bound_a_proof_or_while_kafka_answers() -> None:
    """Fail closed: no grace bound, never proven, Kafka reachable (the view is catching up)."""
    assert grace_end(100.0, 5.0, 0.0, unreachable=True, lag=0) is None
    assert grace_end(None, 5.0, 60.0, unreachable=True, lag=0) is None
    assert grace_end(100.0, 5.0, 60.0, unreachable=False, lag=0) is None


def test_records_known_but_not_applied_end_the_grace() -> None:
    """Once Kafka named records the view has not applied (a revocation issued during the
    outage), no allow overtakes them, even if Kafka drops again before they are applied."""
    clock = [0.0]
    tracker = FreshnessTracker([0], lambda: clock[0])
    tracker.probed(0, 3, 0.0)
    for offset in range(3):
        tracker.applied(0, offset)
    clock[0] = 30.0
    tracker.failed("Kafka down")
    assert grace_end(tracker.floor, 5.0, 60.0, unreachable=bool(tracker.problem),
                     lag=tracker.lag()) == 65.0
    tracker.probed(0, 4, 31.0)  # Kafka is back: one record (the revocation) is new
    tracker.failed("Kafka down again")
    assert tracker.lag() == 1
    assert grace_end(tracker.floor, 5.0, 60.0, unreachable=True, lag=tracker.lag()) is None
    tracker.applied(0, 3)  # applied: proven current as of 31, fresh again
    assert tracker.floor == 31.0 and tracker.lag() == 0


def test_grace_begins_at_the_loss_without_waiting_for_a_failed_probe() -> None:
    """Stale with no answer since the loss counts as unreachable (the probe in flight has not
    timed out yet); the first answer after the loss ends that for good: the view catches up
    before any allow, even if Kafka drops again."""
    clock = [0.0]
    tracker = FreshnessTracker([0, 1], lambda: clock[0])
    for partition in (0, 1):
        tracker.probed(partition, 0, 0.0)
    clock[0] = 0.01
    assert tracker.floor == 0.0 and not tracker.silent(5.0)
    clock[0] = 5.5  # past the bound, the next probe still waiting for its timeout
    assert tracker.silent(5.0)
    assert grace_end(tracker.floor, 5.0, 60.0, unreachable=tracker.silent(5.0),
                     lag=tracker.lag()) == 65.0
    clock[0] = 6.0
    tracker.probed(0, 0, 5.9)  # Kafka answers for one partition; the other is not yet proven
    assert tracker.floor == 0.0 and not tracker.silent(5.0)
    assert grace_end(tracker.floor, 5.0, 60.0, unreachable=tracker.silent(5.0),
                     lag=tracker.lag()) is None
    tracker.failed("Kafka down again")  # an answer since the loss: no grace until caught up
    assert not tracker.silent(5.0)


def test_freshness_names_its_mode_and_the_end_of_grace() -> None:
    """fresh, grace until T (absolute, UTC), or fail closed, in the reason too."""
    assert Freshness(True, 1.0, 0, 5.0).mode == "fresh"
    closed = Freshness(True, 9.0, 0, 5.0, "Kafka down")
    assert closed.mode == "fail-closed" and "(fail closed)" in closed.reason()
    grace = Freshness(True, 9.0, 0, 5.0, "Kafka down", grace_until=1_800_000_000.0)
    assert grace.mode == "grace" and not grace.fresh
    assert "until 2027-01-15T08:00:00+00:00" in grace.reason()


def test_the_announcement_carries_bounded_graces_and_defaults_to_none() -> None:
    """A namespace's grace travels in the signed routing announcement; an old announcement
    without it means fail closed; a grace over an hour or a bad namespace is refused."""
    at = datetime(2026, 12, 6, tzinfo=UTC)
    assert RoutingAnnounced(worker="w", namespaces=("crm",), announced_at=at).grace_s == {}
    sent = RoutingAnnounced(worker="w", namespaces=("crm",), announced_at=at, grace_s={"crm": 40})
    assert RoutingAnnounced.model_validate_json(sent.model_dump_json()).grace_s == {"crm": 40}
    for bad in ({"crm": 3601}, {"crm": 0}, {"crm.eu": 10}):
        with pytest.raises(ValidationError):
            RoutingAnnounced(worker="w", namespaces=("crm",), announced_at=at, grace_s=bad)
