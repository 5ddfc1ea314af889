"""What the worker records as it decides: latency histograms, where each message's time went
(stages), decisions and dead letters by rule and reason. Imports prometheus-client and schemas.

One registry per worker context (unit tests build many). Every label comes from a finite set:
the worker's input topics, the stage names spelled in the handlers, outcomes, the policy's rule
names (and the broker's own), error codes; never an agent id.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.events import EscalationDecided

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0)


class Laps:
    """Where one message's time went: each ``lap`` observes the time since the previous one
    (the first, ``queued``, since Kafka appended the message: fetch, hand-over and the wait
    behind the agent's earlier messages)."""

    __slots__ = ("_last", "_stages", "_topic")

    def __init__(self, stages: Histogram, topic: str, appended_at: float) -> None:
        self._stages, self._topic, self._last = stages, topic, appended_at

    def lap(self, stage: str) -> None:
        """The time since the previous lap, observed as ``stage``."""
        now = time.time()
        self._stages.labels(self._topic, stage).observe(max(now - self._last, 0.0))
        self._last = now


# The laps of the message the current task handles (set by streams/guard.py).
LAPS: ContextVar[Laps | None] = ContextVar("permbroker_laps", default=None)


def lap(stage: str) -> None:
    """End ``stage`` of the message the current task handles (nothing outside a handler)."""
    laps = LAPS.get()
    if laps is not None:
        laps.lap(stage)


def deciding_rule(decision: EscalationDecided) -> str:
    """The rule a decision is counted under: the first denial's, else the clamp, else the
    first matched rule ("none" when no rule of the policy spoke)."""
    if decision.denied:
        return decision.denied[0].rule
    return decision.clamped_by or (decision.matched_rules[0] if decision.matched_rules
                                   else "none")


class Figures:
    """The worker's histograms and labelled counters, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.to_commit = Histogram(
            "permbroker_decision_commit_seconds",
            "From the request's append to Kafka to its decision committed", buckets=BUCKETS,
            registry=r)
        self.to_publish = Histogram(
            "permbroker_decision_publish_seconds",
            "From the decision's commit to its grant and decision events acknowledged by Kafka",
            buckets=BUCKETS, registry=r)
        self.stages = Histogram(
            "permbroker_worker_stage_seconds",
            "Where each message's time went, by input topic and stage (queued: from the append "
            "to Kafka, by the broker's clock, to its handler starting; then each stage the "
            "handler ended; finished: the rest)", ["topic", "stage"],
            buckets=STAGE_BUCKETS, registry=r)
        self.decisions = Counter("permbroker_decisions", "Decisions made, by outcome and rule",
                                 ["outcome", "rule"], registry=r)
        self.dead_letters = Counter("permbroker_dead_letters", "Messages dead-lettered, by "
                                    "reason", ["reason"], registry=r)

    def decided(self, decision: EscalationDecided, appended_at: float, committed_at: float,
                published_at: float | None = None) -> None:
        """One decision made: counted, and its latencies observed (times from ``time.time``)."""
        self.decisions.labels(decision.outcome, deciding_rule(decision)).inc()
        self.to_commit.observe(max(committed_at - appended_at, 0.0))
        self.to_publish.observe(max((published_at or time.time()) - committed_at, 0.0))

    def laps(self, topic: str, appended_at: float) -> Laps:
        """The stopwatch of one message appended at ``appended_at`` (``time.time`` seconds)."""
        return Laps(self.stages, topic, appended_at)

    def dead_lettered(self, reason: str) -> None:
        """A message dead-lettered for a reason of a finite set (an error code)."""
        self.dead_letters.labels(reason).inc()
