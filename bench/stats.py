"""Samples, percentiles and per-round ratios. Imports stdlib only.

An *arm* is one thing measured (the subject, or a reference); each round measures every arm of
a benchmark once, in turn, so noise hits all arms alike. A *comparison* divides one arm by
another round by round and reports the median of those ratios (p50 and p99), which is what the
targets are judged on; the raw samples stay in the JSON report.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass
class Arm:
    """Samples of one arm, round by round, in one unit (e.g. 'ms', 'us', '/s')."""

    name: str
    unit: str
    rounds: list[list[float]] = field(default_factory=list)
    notes: str = ""

    def add_round(self, samples: list[float]) -> None:
        """Store the samples of one round."""
        self.rounds.append(list(samples))

    def round_stat(self, i: int, q: float) -> float:
        """Percentile q of round i."""
        return percentile(self.rounds[i], q)

    def pooled(self, q: float) -> float:
        """Percentile q over every sample of every round."""
        return percentile([v for r in self.rounds for v in r], q)

    def summary(self) -> dict[str, Any]:
        """p50/p90/p99/max over all rounds, per-round p50/p99, and every raw sample."""
        count = sum(len(r) for r in self.rounds)
        return {
            "name": self.name, "unit": self.unit, "notes": self.notes, "count": count,
            "p50": self.pooled(50), "p90": self.pooled(90), "p99": self.pooled(99),
            "max": max((max(r) for r in self.rounds if r), default=math.nan),
            "round_p50": [self.round_stat(i, 50) for i in range(len(self.rounds))],
            "round_p99": [self.round_stat(i, 99) for i in range(len(self.rounds))],
            "samples": self.rounds,
        }


def median_ratio(num: Arm, den: Arm, q: float, den_scale: float = 1.0) -> tuple[float, list[float]]:
    """Median over rounds of percentile_q(num) / (den_scale * percentile_q(den)), and the list."""
    ratios = []
    for i in range(min(len(num.rounds), len(den.rounds))):
        d = den.round_stat(i, q) * den_scale
        n = num.round_stat(i, q)
        if d > 0 and not math.isnan(n) and not math.isnan(d):
            ratios.append(n / d)
    return (statistics.median(ratios) if ratios else math.nan), ratios


@dataclass
class Target:
    """A bound on a figure: ``value <= limit`` (or ``>=`` when ``at_least``)."""

    text: str
    limit: float
    at_least: bool = False

    def met(self, value: float) -> bool | None:
        """True/False, or None when the value could not be measured."""
        if math.isnan(value):
            return None
        return value >= self.limit if self.at_least else value <= self.limit


@dataclass
class Line:
    """One line of the report: a figure, what it is compared with, and its target if any."""

    bench: str
    what: str
    value: float
    unit: str
    reference: str = ""
    per_round: list[float] = field(default_factory=list)
    target: Target | None = None

    @property
    def verdict(self) -> str:
        """'met', 'MISSED', 'n/a' (not measurable) or '' (no target)."""
        if self.target is None:
            return ""
        met = self.target.met(self.value)
        return "n/a" if met is None else ("met" if met else "MISSED")

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "bench": self.bench, "what": self.what, "value": self.value, "unit": self.unit,
            "reference": self.reference, "per_round": self.per_round,
            "target": self.target.text if self.target else None, "verdict": self.verdict,
        }


def ratio_lines(bench: str, num: Arm, den: Arm, *, label: str, den_scale: float = 1.0,
                p50_target: Target | None = None,
                p99_target: Target | None = None) -> list[Line]:
    """Two lines (p50 and p99) of median per-round ratios num / (den_scale * den)."""
    out = []
    for q, target in ((50, p50_target), (99, p99_target)):
        value, rounds = median_ratio(num, den, q, den_scale)
        scale = f"{den_scale:g}x " if den_scale != 1 else ""
        out.append(Line(bench, f"{label} p{q} ratio", value, "x",
                        f"{num.name} / {scale}{den.name}", rounds, target))
    return out
