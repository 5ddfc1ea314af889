"""Behaviour profiles and anomaly detectors (pure). Imports broker.policy.detectors, stdlib.

A profile is one agent's recent behaviour, compact enough for one Redis value: time buckets of
(requests, granted, denied) reaching back over the longest detector window, a 24-slot UTC
hour-of-day histogram, the scopes and resource patterns it used (with when, at most
``MAX_PATTERNS`` each) and when each detector may fire again. ``observe`` folds one decided
request in; ``detect`` compares the profile against the thresholds of the policy's
``detectors`` section and returns findings with their evidence. Time is the decision's own time
(passed in), so a replay of the same decisions yields the same profile and findings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from broker.policy.detectors import (
    DENIAL_BURST,
    NOVEL_PATTERN,
    OFF_HOURS,
    RATE_SPIKE,
    Detectors,
)

MAX_PATTERNS = 64  # scopes and resource patterns kept per profile (least recent dropped)
HOURS_CAP = 100_000  # the hour histogram is halved past this many requests (slow decay)
_DIGITS = re.compile(r"\d+")
Bucket = tuple[int, int, int, int]  # (start ms, requests, granted, denied)


def ms(at: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return int(at.timestamp() * 1000)


def resource_pattern(resource: str) -> str:
    """A resource with its numbers generalised: ``acct-4411-0923`` -> ``acct-#-#``."""
    return _DIGITS.sub("#", resource)


@dataclass(frozen=True)
class Observation:
    """One decided escalation request, as the profiles see it."""

    agent_id: str
    agent_class: str
    model_version: str
    decision_id: str
    at: datetime
    granted: bool
    scopes: tuple[str, ...]
    resources: tuple[str, ...]

    @property
    def patterns(self) -> tuple[str, ...]:
        """The class-level patterns this request used: ``scope:<s>`` and ``resource:<p>``."""
        found = [f"scope:{s}" for s in self.scopes]
        found += [f"resource:{resource_pattern(r)}" for r in self.resources]
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class Profile:
    """One agent's behaviour (see the module docstring); ``to_json``/``from_json`` store it."""

    bucket_ms: int
    agent_class: str = ""
    model_version: str = ""
    first_ms: int = 0
    last_ms: int = 0
    requests: int = 0
    granted: int = 0
    denied: int = 0
    buckets: tuple[Bucket, ...] = ()
    hours: tuple[int, ...] = (0,) * 24
    scopes: dict[str, int] = field(default_factory=dict)
    resources: dict[str, int] = field(default_factory=dict)
    fired: dict[str, int] = field(default_factory=dict)  # detector -> silent until (ms)

    def to_json(self) -> str:
        """The compact stored form."""
        return json.dumps({"v": 1, "b": self.bucket_ms, "c": self.agent_class,
                           "m": self.model_version, "f": self.first_ms, "l": self.last_ms,
                           "n": [self.requests, self.granted, self.denied],
                           "k": [list(b) for b in self.buckets], "h": list(self.hours),
                           "s": self.scopes, "r": self.resources, "x": self.fired},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Profile:
        """A stored profile (ValueError/KeyError/TypeError when it is not one)."""
        d = json.loads(text)
        n = d["n"]
        return cls(int(d["b"]), str(d["c"]), str(d["m"]), int(d["f"]), int(d["l"]),
                   int(n[0]), int(n[1]), int(n[2]),
                   tuple((int(b[0]), int(b[1]), int(b[2]), int(b[3])) for b in d["k"]),
                   tuple(int(h) for h in d["h"]), dict(d["s"]), dict(d["r"]), dict(d["x"]))

    def window(self, now_ms: int, window_ms: int, end_ms: int | None = None) -> Bucket:
        """(start, requests, granted, denied) in the buckets of ``window_ms`` ending at
        ``end_ms`` (default: the bucket holding ``now_ms``, included)."""
        end = _start(now_ms, self.bucket_ms) if end_ms is None else end_ms
        inside = [b for b in self.buckets if end - window_ms < b[0] <= end]
        return (end - window_ms + self.bucket_ms, sum(b[1] for b in inside),
                sum(b[2] for b in inside), sum(b[3] for b in inside))


def _start(at_ms: int, bucket_ms: int) -> int:
    return at_ms - at_ms % bucket_ms


def _recent(seen: dict[str, int], names: tuple[str, ...], at_ms: int) -> dict[str, int]:
    merged = {**seen, **{n: max(at_ms, seen.get(n, 0)) for n in names}}
    if len(merged) <= MAX_PATTERNS:
        return merged
    kept = sorted(merged.items(), key=lambda kv: kv[1], reverse=True)[:MAX_PATTERNS]
    return dict(kept)


def _hours(hours: tuple[int, ...], hour: int) -> tuple[int, ...]:
    counted = tuple(c + (1 if h == hour else 0) for h, c in enumerate(hours))
    return tuple(c // 2 for c in counted) if sum(counted) > HOURS_CAP else counted


def observe(profile: Profile | None, obs: Observation, cfg: Detectors) -> Profile:
    """The profile with one more decided request (buckets older than the windows dropped)."""
    bucket_ms = cfg.bucket_s * 1000
    if profile is None or profile.bucket_ms != bucket_ms:  # new agent, or the policy changed
        profile = Profile(bucket_ms, first_ms=ms(obs.at),
                          fired=profile.fired if profile is not None else {})
    at = ms(obs.at)
    start = _start(at, bucket_ms)
    counts = {b[0]: b for b in profile.buckets}
    _, req, grant, deny = counts.get(start, (start, 0, 0, 0))
    counts[start] = (start, req + 1, grant + obs.granted, deny + (not obs.granted))
    newest = max(counts)
    horizon = newest - cfg.history_s * 1000
    return replace(
        profile, agent_class=obs.agent_class, model_version=obs.model_version,
        first_ms=min(profile.first_ms or at, at), last_ms=max(profile.last_ms, at),
        requests=profile.requests + 1, granted=profile.granted + obs.granted,
        denied=profile.denied + (not obs.granted),
        buckets=tuple(b for s, b in sorted(counts.items()) if s > horizon),
        hours=_hours(profile.hours, obs.at.astimezone(UTC).hour),
        scopes=_recent(profile.scopes, obs.scopes, at),
        resources=_recent(profile.resources, tuple(resource_pattern(r) for r in obs.resources),
                          at),
    )


@dataclass(frozen=True)
class ClassView:
    """What the agent's class has on record: its request count and which of this request's
    patterns any agent of the class used before."""

    requests: int
    known: frozenset[str]


@dataclass(frozen=True)
class Finding:
    """One detector that fired: what it saw, as text and as evidence fields."""

    detector: str
    severity: float
    summary: str
    evidence: dict[str, float | str]


def detect(before: Profile | None, after: Profile, obs: Observation, cfg: Detectors,
           klass: ClassView) -> tuple[Finding, ...]:
    """The detectors that fire on ``obs`` (``after`` includes it; ``before`` does not)."""
    now = ms(obs.at)
    found = [_rate_spike(after, now, cfg), _denial_burst(after, obs, now, cfg),
             _novel(obs, cfg, klass), _off_hours(before, obs, cfg)]
    return tuple(f for f in found if f is not None and after.fired.get(f.detector, 0) <= now)


def silence(profile: Profile, findings: tuple[Finding, ...], cfg: Detectors,
            at: datetime) -> Profile:
    """The profile with each fired detector silent for its cooldown."""
    cooldowns = {RATE_SPIKE: cfg.rate_spike, DENIAL_BURST: cfg.denial_burst,
                 NOVEL_PATTERN: cfg.novel_pattern, OFF_HOURS: cfg.off_hours}
    fired = dict(profile.fired)
    for f in findings:
        detector = cooldowns[f.detector]
        fired[f.detector] = ms(at) + (detector.cooldown_s * 1000 if detector else 0)
    return replace(profile, fired=fired)


def _rate_spike(p: Profile, now: int, cfg: Detectors) -> Finding | None:
    rule = cfg.rate_spike
    if rule is None:
        return None
    window_ms, baseline_ms = rule.window_s * 1000, rule.baseline_s * 1000
    current = p.window(now, window_ms)
    span = min(baseline_ms, current[0] - _start(p.first_ms, p.bucket_ms))
    if span < rule.min_history_s * 1000 or current[1] < rule.min_requests:
        return None
    base = p.window(now, span, end_ms=current[0] - p.bucket_ms)
    average = base[1] * window_ms / span  # requests per window over the baseline
    if current[1] < rule.factor * average:
        return None
    factor = current[1] / average if average else float(current[1])
    return Finding(RATE_SPIKE, rule.severity,
                   f"{current[1]} requests in {rule.window_s}s, {factor:.1f}x the agent's "
                   f"baseline of {average:.2f} per {rule.window_s}s over the previous "
                   f"{span // 1000}s (threshold {rule.factor:g}x, at least "
                   f"{rule.min_requests})",
                   {"detector": RATE_SPIKE, "requests": float(current[1]),
                    "window_s": float(rule.window_s), "baseline_per_window": round(average, 4),
                    "baseline_requests": float(base[1]), "baseline_s": float(span // 1000),
                    "factor": round(factor, 2), "threshold_factor": rule.factor})


def _denial_burst(p: Profile, obs: Observation, now: int, cfg: Detectors) -> Finding | None:
    rule = cfg.denial_burst
    if rule is None or obs.granted:
        return None
    _, requests, _, denied = p.window(now, rule.window_s * 1000)
    ratio = denied / requests if requests else 0.0
    if denied < rule.min_denials or ratio < rule.min_ratio:
        return None
    return Finding(DENIAL_BURST, rule.severity,
                   f"{denied} of {requests} requests denied in {rule.window_s}s (threshold "
                   f"{rule.min_denials} denials, ratio {rule.min_ratio:g})",
                   {"detector": DENIAL_BURST, "denied": float(denied),
                    "requests": float(requests), "ratio": round(ratio, 3),
                    "window_s": float(rule.window_s), "threshold_denials": float(rule.min_denials)})


def _novel(obs: Observation, cfg: Detectors, klass: ClassView) -> Finding | None:
    rule = cfg.novel_pattern
    if rule is None or klass.requests < rule.min_class_requests:
        return None
    new = [p for p in obs.patterns if p not in klass.known]
    if not new:
        return None
    return Finding(NOVEL_PATTERN, rule.severity,
                   f"{', '.join(new[:5])} never seen for class {obs.agent_class} "
                   f"({klass.requests} requests on record)",
                   {"detector": NOVEL_PATTERN, "patterns": ",".join(new)[:256],
                    "agent_class": obs.agent_class, "class_requests": float(klass.requests)})


def _off_hours(before: Profile | None, obs: Observation, cfg: Detectors) -> Finding | None:
    rule = cfg.off_hours
    total = sum(before.hours) if before is not None else 0
    if rule is None or before is None or total < rule.min_requests:
        return None
    hour = obs.at.astimezone(UTC).hour
    share = before.hours[hour] / total
    if share > rule.max_share:
        return None
    usual = sorted(range(24), key=lambda h: before.hours[h], reverse=True)[:3]
    return Finding(OFF_HOURS, rule.severity,
                   f"request at {hour:02d}h UTC, an hour holding {share:.1%} of the agent's "
                   f"{total} requests (threshold {rule.max_share:.1%}); usual hours "
                   f"{', '.join(f'{h:02d}h' for h in sorted(usual))}",
                   {"detector": OFF_HOURS, "hour_utc": float(hour), "share": round(share, 4),
                    "history_requests": float(total), "threshold_share": rule.max_share})
