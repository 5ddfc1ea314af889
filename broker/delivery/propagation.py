"""Revocation propagation (pure): which enforcement points confirmed which revocation, how fast.

Imports schemas and stdlib; ``now`` is an argument. An enforcement point (a grant view with a
name) acknowledges each revocation it applies; its propagation time is ``applied_at`` (the
view's clock) minus ``revoked_at`` (when Kafka appended the revoking signal), so it covers the
worker, Kafka and the view. A point is expected to confirm every revocation made while it was
running (since it first reported); one that stopped reporting is flagged silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from schemas.events import AgentRevoked, EnforcementPointStatus, RevocationAcknowledged

SILENT_AFTER = timedelta(seconds=45)  # views report every 10 s


@dataclass(frozen=True)
class Propagation:
    """One confirmed revocation at one enforcement point."""

    enforcement_point: str
    cause_event_id: str
    agent_id: str
    revoked_at: datetime
    applied_at: datetime
    replayed: bool = False

    @property
    def seconds(self) -> float:
        """Propagation time from the revoking signal's append to the view applying it."""
        return (self.applied_at - self.revoked_at).total_seconds()


@dataclass
class PointReport:
    """One enforcement point: its confirmations, what it has not confirmed, its last report."""

    name: str
    topic: str = ""
    first_seen: datetime | None = None
    last_report: EnforcementPointStatus | None = None
    confirmed: list[Propagation] = field(default_factory=list)
    unconfirmed: list[AgentRevoked] = field(default_factory=list)

    def silent(self, now: datetime) -> bool:
        """No status report for longer than views take to report."""
        last = self.last_report.reported_at if self.last_report else None
        return last is None or now - last > SILENT_AFTER

    def percentile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the live propagation times (replays excluded), in seconds."""
        times = sorted(p.seconds for p in self.confirmed if not p.replayed)
        if not times:
            return None
        return times[min(int(q * len(times)), len(times) - 1)]


@dataclass(frozen=True)
class RevocationStatus:
    """Every revocation in the window and every enforcement point's view of them."""

    revocations: tuple[AgentRevoked, ...]
    points: tuple[PointReport, ...]


def fold_status(
    revocations: Iterable[AgentRevoked],
    acks: Iterable[RevocationAcknowledged],
    statuses: Iterable[EnforcementPointStatus],
) -> RevocationStatus:
    """Match acknowledgements to revocations per enforcement point (first ack counts)."""
    by_cause: dict[str, AgentRevoked] = {}
    for rev in revocations:
        by_cause.setdefault(rev.cause_event_id, rev)
    points: dict[str, PointReport] = {}
    for st in statuses:
        point = points.setdefault(st.enforcement_point, PointReport(st.enforcement_point))
        point.topic = st.topic
        point.first_seen = min(filter(None, (point.first_seen, st.started_at)))
        if point.last_report is None or st.reported_at >= point.last_report.reported_at:
            point.last_report = st
    seen: dict[tuple[str, str], Propagation] = {}
    for ack in acks:
        points.setdefault(ack.enforcement_point, PointReport(ack.enforcement_point))
        key = (ack.enforcement_point, ack.cause_event_id)
        if key not in seen or ack.applied_at < seen[key].applied_at:
            seen[key] = Propagation(ack.enforcement_point, ack.cause_event_id, ack.agent_id,
                                    ack.revoked_at, ack.applied_at, ack.replayed)
    for (name, cause), prop in seen.items():
        if cause in by_cause:
            points[name].confirmed.append(prop)
    for point in points.values():
        confirmed = {p.cause_event_id for p in point.confirmed}
        point.unconfirmed = [
            rev for cause, rev in by_cause.items()
            if cause not in confirmed and point.first_seen is not None
            and rev.revoked_at >= point.first_seen
        ]
    ordered = sorted(by_cause.values(), key=lambda r: r.revoked_at)
    return RevocationStatus(tuple(ordered), tuple(sorted(points.values(), key=lambda p: p.name)))
