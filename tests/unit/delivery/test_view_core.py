"""The grant view's pure parts: freshness proofs, the grant index, revocation propagation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.adapters.kafka.bus import Record
from broker.delivery.freshness import FreshnessTracker
from broker.delivery.propagation import fold_status
from broker.sdk.resource.index import GrantIndex
from schemas.events import (
    AgentRevoked,
    EnforcementPointStatus,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    RevocationAcknowledged,
    WireModel,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE = "payments:accounts.freeze"


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_view_is_ready_only_once_every_partition_is_proven_current() -> None:
    """Catching up with the log end seen at start proves freshness, partition by partition."""
    clock = Clock()
    tracker = FreshnessTracker([0, 1], clock)
    tracker.probed(0, 0, clock.t)  # empty partition: proven at once
    tracker.probed(1, 3, clock.t)
    assert not tracker.ready() and tracker.lag() == 3
    tracker.applied(1, 1)
    assert not tracker.ready()
    tracker.applied(1, 2)
    assert tracker.ready() and tracker.lag() == 0
    assert tracker.snapshot(5.0).fresh


def test_staleness_grows_without_probes_and_recovers_when_they_succeed() -> None:
    """No answer from Kafka: the proof ages past the bound (with the cause); a probe renews it."""
    clock = Clock()
    tracker = FreshnessTracker([0], clock)
    tracker.probed(0, 0, clock.t)
    clock.t += 6
    tracker.failed("cannot reach Kafka")
    snap = tracker.snapshot(5.0)
    assert not snap.fresh and snap.staleness_s == 6
    assert "beyond its 5s staleness bound" in snap.reason()
    assert "cannot reach Kafka" in snap.reason()
    tracker.probed(0, 0, clock.t)
    assert tracker.snapshot(5.0).fresh and tracker.problem == ""


def test_a_view_behind_the_log_end_is_not_proven_until_it_catches_up() -> None:
    """A probe that finds new records proves nothing until they are applied."""
    clock = Clock()
    tracker = FreshnessTracker([0], clock)
    tracker.probed(0, 0, clock.t)
    clock.t += 1
    tracker.probed(0, 2, clock.t)  # two records appended, not yet read
    clock.t += 5
    assert not tracker.snapshot(5.0).fresh
    tracker.applied(0, 1)
    assert tracker.snapshot(5.0).staleness_s == 5.0 and tracker.snapshot(5.0).fresh


def record(event: WireModel | None, offset: int, key: bytes | None = b"a-1", *,
           authentic: bool = True) -> Record:
    """A record as the decode edge hands it over (``authentic``: its signature verified)."""
    return Record("permbroker.grants", 0, offset, 0, event, None if event else "bad", None, key,
                  authentic=authentic)


def grant(gid: str = "g-1", life_s: int = 20) -> GrantIssued:
    return GrantIssued(grant_id=gid, agent_id="a-1", request_id="r-" + gid, scopes=(FREEZE,),
                       resources=("acct-1",), issued_at=NOW,
                       expires_at=NOW + timedelta(seconds=life_s), policy_revision="p", rules=())


def test_index_judges_expiry_at_check_time_and_applies_renewals() -> None:
    """Expired at check time is denied; a renewal moves the expiry; resources are enforced."""
    index = GrantIndex()
    index.apply(record(grant(), 0))
    assert index.allows("a-1", FREEZE, "acct-1", NOW + timedelta(seconds=5)).allowed
    assert not index.allows("a-1", FREEZE, "acct-2", NOW).allowed
    late = index.allows("a-1", FREEZE, "acct-1", NOW + timedelta(seconds=21))
    assert not late.allowed and "expired at" in late.reason
    index.apply(record(GrantRenewed(
        grant_id="g-1", agent_id="a-1", request_id="renew-1", scopes=(FREEZE,),
        resources=("acct-1",), renewed_at=NOW, previous_expires_at=NOW + timedelta(seconds=20),
        expires_at=NOW + timedelta(seconds=40), policy_revision="p", rules=()), 1))
    verdict = index.allows("a-1", FREEZE, "acct-1", NOW + timedelta(seconds=21))
    assert verdict.allowed and "19.0s left" in verdict.reason


def test_ended_grants_never_come_back_and_undecodable_events_fail_closed() -> None:
    """A released grant replayed stays ended; an unreadable event the broker signed denies its
    agent; an unsigned or forged one (refused at the edge) denies no one."""
    index = GrantIndex()
    index.apply(record(grant(), 0))
    index.apply(record(GrantReleased(grant_id="g-1", agent_id="a-1", released_at=NOW), 1))
    index.apply(record(grant(), 2))  # a duplicate of the issue after the release
    assert not index.allows("a-1", FREEZE, "acct-1", NOW).allowed
    index.apply(record(grant("g-2"), 3))
    assert index.allows("a-1", FREEZE, "acct-1", NOW).allowed
    index.apply(record(None, 4, authentic=False))
    index.apply(record(None, 5, key=b"a-1\n", authentic=True))  # names no agent (full match)
    assert index.allows("a-1", FREEZE, "acct-1", NOW).allowed and index.refused == 1
    copied = Record("permbroker.grants", 0, 6, 0, None, "audit record", None, b"a-1",
                    reason="wrong-topic", authentic=True)  # the broker's, from another topic
    index.apply(copied)
    assert index.allows("a-1", FREEZE, "acct-1", NOW).allowed
    index.apply(record(None, 7))
    denied = index.allows("a-1", FREEZE, "acct-1", NOW)
    assert not denied.allowed and "could not be decoded" in denied.reason


def test_the_index_remembers_at_most_its_bound_of_ended_grants() -> None:
    """Ended grant ids are kept up to the bound, the oldest forgotten first."""
    index = GrantIndex(max_entries=100)
    for n in range(1000):
        index.apply(record(GrantReleased(grant_id=f"g-{n}", agent_id="a-1", released_at=NOW), n))
    assert index.state("a-1", "g-999") == "ended" and index.state("a-1", "g-0") == "unknown"
    assert len(index._ended) == 100


def test_agent_revocation_ends_every_grant_of_the_agent() -> None:
    """agent.revoked removes all the agent's grants and is handed back for acknowledgement."""
    index = GrantIndex()
    index.apply(record(grant("g-1"), 0))
    index.apply(record(grant("g-2"), 1))
    rev = AgentRevoked(agent_id="a-1", revoked_at=NOW, reason="r", rule="x",
                       cause_event_id="sig-1", grant_ids=("g-1",),
                       markers_until=NOW + timedelta(hours=1))
    assert index.apply(record(rev, 2)) == rev
    assert not index.allows("a-1", FREEZE, "acct-1", NOW).allowed
    assert index.active("a-1", NOW) == []


def test_propagation_status_matches_acks_to_revocations_per_point() -> None:
    """First ack per point counts; a running point that never acked lists it as unconfirmed."""
    rev = AgentRevoked(agent_id="a-1", revoked_at=NOW, reason="r", rule="x",
                       cause_event_id="sig-1", markers_until=NOW + timedelta(hours=1))

    def ack(point: str, ms: int) -> RevocationAcknowledged:
        return RevocationAcknowledged(
            ack_id=f"ack-{point}-{ms}", enforcement_point=point, agent_id="a-1",
            cause_event_id="sig-1", revoked_at=NOW,
            applied_at=NOW + timedelta(milliseconds=ms), topic="t", partition=0, offset=1)

    def status(point: str) -> EnforcementPointStatus:
        return EnforcementPointStatus(enforcement_point=point, topic="t", ready=True,
                                      started_at=NOW - timedelta(minutes=1), reported_at=NOW)

    report = fold_status([rev, rev], [ack("pay", 30), ack("pay", 900)],
                         [status("pay"), status("crm")])
    by_name = {p.name: p for p in report.points}
    assert len(report.revocations) == 1
    assert [round(c.seconds, 3) for c in by_name["pay"].confirmed] == [0.03]
    assert by_name["pay"].unconfirmed == [] and by_name["crm"].unconfirmed == [rev]
    assert by_name["pay"].percentile(0.5) == 0.03
