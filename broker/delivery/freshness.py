"""How current a grant view is (pure): freshness proofs per partition, lag, staleness. Stdlib.

A view is *proven current as of t* on a partition when, having asked Kafka at local time t for
the partition's log end E, it has applied every record before E. That proof needs no clock shared
with the broker or the workers, and an idle topic still proves freshness (its end does not move).
The view's staleness is the age of its oldest partition proof; when Kafka cannot be reached no new
proof comes, so staleness grows past the bound and the view fails closed, then recovers on its
own once probes succeed again. A namespace the policy gives a grace bound degrades instead
(``grace_end``): its view keeps grants it already holds for that long, never past their expiry,
while Kafka stays unreachable. The tracker is not thread-safe: the view's consumer thread owns it
and publishes ``floor`` (a float) for lock-free reads.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

MAX_PENDING = 64  # probes remembered per partition while the view is behind


@dataclass(frozen=True)
class Freshness:
    """A snapshot of how current a view is."""

    ready: bool
    staleness_s: float | None
    lag: int
    bound_s: float
    problem: str = ""
    paused: bool = False
    unrouted: str = ""  # why no worker writes the view's topic ('' when one does)
    grace_until: float | None = None  # epoch seconds: in grace (degraded mode) until then

    @property
    def mode(self) -> str:
        """'fresh', 'grace' (already delivered grants kept until ``grace_until``) or
        'fail-closed'."""
        if self.fresh:
            return "fresh"
        return "grace" if self.grace_until is not None else "fail-closed"

    @property
    def fresh(self) -> bool:
        """Ready and proven current within the bound."""
        return self.ready and self.staleness_s is not None and self.staleness_s <= self.bound_s

    def reason(self) -> str:
        """Why the view is not fresh ('' when it is)."""
        if self.unrouted:
            return f"{self.unrouted} (fail closed)"
        if not self.ready:
            return "grant view still catching up with the log (fail closed)"
        if self.fresh:
            return ""
        age = "never" if self.staleness_s is None else f"{self.staleness_s:.1f}s ago"
        why = f": {self.problem}" if self.problem else (": paused" if self.paused else "")
        mode = "fail closed" if self.grace_until is None else (
            "grace for grants delivered before, until "
            f"{datetime.fromtimestamp(self.grace_until, UTC).isoformat(timespec='seconds')}")
        return (
            f"grant view last proven current {age}, beyond its {self.bound_s:g}s staleness "
            f"bound ({mode}){why}"
        )


class FreshnessTracker:
    """Per-partition next offsets, pending probes and proofs of one topic."""

    def __init__(self, partitions: Iterable[int], clock: Callable[[], float]) -> None:
        self._clock = clock
        self.next: dict[int, int] = {p: 0 for p in partitions}
        self.proof: dict[int, float | None] = dict.fromkeys(self.next)
        self.ends: dict[int, int] = dict.fromkeys(self.next, 0)
        self._pending: dict[int, deque[tuple[float, int]]] = {
            p: deque(maxlen=MAX_PENDING) for p in self.next
        }
        self.problem = ""
        self.floor: float | None = None  # min proof over partitions; None until all are proven
        self.answered_at: float | None = None  # when Kafka last answered a probe

    def start_at(self, partition: int, offset: int) -> None:
        """The first offset the view will read on a partition (its low watermark)."""
        self.next[partition] = max(self.next[partition], offset)

    def probed(self, partition: int, end: int, asked_at: float) -> None:
        """Kafka said the log end of ``partition`` was ``end`` when asked at ``asked_at``."""
        self.ends[partition] = max(self.ends[partition], end)
        self._pending[partition].append((asked_at, end))
        self.problem = ""
        self.answered_at = self._clock()
        self._settle(partition)

    def applied(self, partition: int, offset: int) -> None:
        """The record at ``offset`` has been applied."""
        if offset + 1 > self.next[partition]:
            self.next[partition] = offset + 1
        if self._pending[partition]:
            self._settle(partition)

    def failed(self, problem: str) -> None:
        """A probe failed (Kafka unreachable): no proof, and say why."""
        self.problem = problem

    def _settle(self, partition: int) -> None:
        pending, position = self._pending[partition], self.next[partition]
        changed = False
        while pending and pending[0][1] <= position:
            self.proof[partition] = pending.popleft()[0]
            changed = True
        if changed:
            proofs = self.proof.values()
            self.floor = None if None in proofs else min(p for p in proofs if p is not None)

    def silent(self, bound_s: float) -> bool:
        """Kafka has not answered a probe since the view lost freshness (the last proof plus
        ``bound_s``). Grace begins at the loss, not when a probe in flight times out, and the
        first answer after it ends the grace for good: the view then catches up before any
        allow, even if Kafka drops again before it has."""
        lost = None if self.floor is None else self.floor + bound_s
        return lost is not None and self._clock() > lost and (self.answered_at or 0.0) <= lost

    def ready(self) -> bool:
        """Every partition proven current at least once."""
        return self.floor is not None

    def lag(self) -> int:
        """Records between what is applied and the last known log ends."""
        return sum(max(self.ends[p] - self.next[p], 0) for p in self.next)

    def snapshot(self, bound_s: float, *, paused: bool = False) -> Freshness:
        """The view's freshness now."""
        floor = self.floor
        staleness = None if floor is None else max(self._clock() - floor, 0.0)
        return Freshness(floor is not None, staleness, self.lag(), bound_s, self.problem, paused)


class BrokerClock:
    """A lower bound on the broker's time, immune to a wrong local wall clock.

    Every record carries a timestamp (the broker's append time, or on the grant topic the
    writing worker's create time); it was stamped before it was read, so ``timestamp + time
    elapsed since the read`` (on the local *monotonic* clock) is a time the broker's side has
    certainly reached. A resource service whose wall clock runs behind uses
    it as a floor for ``now``, so an expired token is not honoured for as long as it is behind.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._anchor: tuple[float, float] | None = None  # (append time s, monotonic at read)

    def seen(self, appended_at_s: float) -> None:
        """A record appended at ``appended_at_s`` (epoch seconds) was read just now."""
        read_at = self._monotonic()
        if self._anchor is None or appended_at_s > self.floor_s(read_at):
            self._anchor = (appended_at_s, read_at)

    def floor_s(self, at: float | None = None) -> float:
        """Epoch seconds the broker has certainly reached (0 before any record)."""
        if self._anchor is None:
            return 0.0
        appended, read_at = self._anchor
        return appended + max((self._monotonic() if at is None else at) - read_at, 0.0)


def grace_end(floor: float | None, bound_s: float, grace_s: float, *, unreachable: bool,
              lag: int) -> float | None:
    """When a degraded view's grace ends (on the clock of ``floor``), or None: no grace.

    Grace runs from the moment freshness was lost (the last proof plus the staleness bound) for
    ``grace_s``; it applies only while Kafka has not answered since that moment
    (``FreshnessTracker.silent``) and the view has applied every record it knows exists. Once a
    probe answers again, the view fails closed until it has applied what the answer named (a
    revocation issued during the outage): nothing pending is ever overtaken by an allow.
    """
    if floor is None or grace_s <= 0 or not unreachable or lag > 0:
        return None
    return floor + bound_s + grace_s
