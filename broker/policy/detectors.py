"""The ``detectors:`` section of a policy: behaviour windows and thresholds. Imports policy.fields.

Thresholds live in the policy, not in code: what counts as a rate spike, a burst of denials, a
pattern new to a class or an hour outside an agent's habits. Every detector is optional; a
policy without the section watches nothing. The loader checks every field with file/line/rule
errors like the rest of the bundle::

    detectors:
      bucket: 10s                  # time buckets of the profiles; windows are multiples of it
      retention: 7d                # a profile lives this long after the agent's last request
      agent_classes: [fraud-detection]   # optional: the classes watched (default: all)
      rate_spike: {window: 1m, baseline: 30m, min_history: 10m, factor: 10, min_requests: 20,
                   severity: 0.9}
      denial_burst: {window: 1m, min_denials: 5, min_ratio: 0.5, severity: 0.85}
      novel_pattern: {min_class_requests: 200, remember: 30d, severity: 0.6}
      off_hours: {min_requests: 200, max_share: 0.01, severity: 0.5}
      unusual_resources: {window: 1m, min_checks: 20, max_new_share: 0.5, min_known: 5,
                          remember: 7d, severity: 0.9}

Each detector also takes ``cooldown`` (default: its window; one hour for ``off_hours``): after
it fires for an agent, it stays silent for that agent that long.

``unusual_resources`` reads what agents do, not what they ask for: the checks enforcement
points report. It fires when, in ``window``, an agent made at least ``min_checks`` checks and
at least ``max_new_share`` of them touched resources it had never used before, once it has a
usual set of at least ``min_known`` resources (remembered for ``remember``).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.fields import (
    At,
    check_fields,
    mapping,
    optional_duration,
    optional_positive_int,
    strings,
)
from broker.policy.model import AgentClass, format_duration
from broker.policy.source import LineMap

RATE_SPIKE, DENIAL_BURST, NOVEL_PATTERN, OFF_HOURS, UNUSUAL_RESOURCES = (
    "rate_spike", "denial_burst", "novel_pattern", "off_hours", "unusual_resources")
DETECTOR_NAMES = (RATE_SPIKE, DENIAL_BURST, NOVEL_PATTERN, OFF_HOURS, UNUSUAL_RESOURCES)
HOUR_S = 3600


@dataclass(frozen=True)
class RateSpike:
    """Fires when requests in ``window`` reach ``factor`` times the agent's own average."""

    window_s: int
    baseline_s: int
    min_history_s: int
    factor: float
    min_requests: int
    severity: float
    cooldown_s: int


@dataclass(frozen=True)
class DenialBurst:
    """Fires when ``min_denials`` denials (and ``min_ratio`` of the requests) fall in a window."""

    window_s: int
    min_denials: int
    min_ratio: float
    severity: float
    cooldown_s: int


@dataclass(frozen=True)
class NovelPattern:
    """Fires on a scope or resource pattern no agent of the class used, once the class has
    ``min_class_requests`` requests on record; patterns are remembered for ``remember_s``."""

    min_class_requests: int
    remember_s: int
    severity: float
    cooldown_s: int


@dataclass(frozen=True)
class OffHours:
    """Fires on a request in a UTC hour holding at most ``max_share`` of the agent's history,
    once it has ``min_requests`` requests on record."""

    min_requests: int
    max_share: float
    severity: float
    cooldown_s: int


@dataclass(frozen=True)
class UnusualResources:
    """Fires when ``max_new_share`` of at least ``min_checks`` checks in ``window_s`` touched
    resources new to an agent whose usual set holds at least ``min_known`` resources."""

    window_s: int
    min_checks: int
    max_new_share: float
    min_known: int
    remember_s: int
    severity: float
    cooldown_s: int


@dataclass(frozen=True)
class Detectors:
    """The behaviour detectors of one policy revision (every detector optional)."""

    bucket_s: int = 10
    retention_s: int = 7 * 86400
    agent_classes: tuple[str, ...] | None = None  # None: every class
    rate_spike: RateSpike | None = None
    denial_burst: DenialBurst | None = None
    novel_pattern: NovelPattern | None = None
    off_hours: OffHours | None = None
    unusual_resources: UnusualResources | None = None

    def watches(self, agent_class: str) -> bool:
        """Whether agents of ``agent_class`` are profiled and watched."""
        return self.agent_classes is None or agent_class in self.agent_classes

    @property
    def history_s(self) -> int:
        """How far back the profile's time buckets must reach for every window."""
        spans = [self.bucket_s]
        if self.rate_spike is not None:
            spans.append(self.rate_spike.window_s + self.rate_spike.baseline_s)
        if self.denial_burst is not None:
            spans.append(self.denial_burst.window_s)
        return max(spans)

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the detectors configured."""
        return tuple(n for n in DETECTOR_NAMES if getattr(self, n) is not None)


_FIELDS = {
    RATE_SPIKE: (("window", "baseline", "factor", "severity"),
                 ("min_history", "min_requests", "cooldown", "description")),
    DENIAL_BURST: (("window", "min_denials", "severity"),
                   ("min_ratio", "cooldown", "description")),
    NOVEL_PATTERN: (("min_class_requests", "severity"), ("remember", "cooldown", "description")),
    OFF_HOURS: (("min_requests", "max_share", "severity"), ("cooldown", "description")),
    UNUSUAL_RESOURCES: (("window", "min_checks", "max_new_share", "severity"),
                        ("min_known", "remember", "cooldown", "description")),
}


def parse_detectors(body: LineMap, at: At, classes: dict[str, AgentClass]) -> Detectors | None:
    """The ``detectors`` section of a Policy document (None when absent)."""
    if "detectors" not in body:
        return None
    section = mapping(body, "detectors", at)
    check_fields(section, at, "the detectors section", required=(),
                 optional=("bucket", "retention", "agent_classes", "description",
                           *DETECTOR_NAMES))
    bucket = optional_duration(section, "bucket", at) or 10
    refs = strings(section, "agent_classes", at, required=False)
    for name, line in refs:
        if name not in classes:
            raise at.error(f"unknown agent class {name!r}; defined: {', '.join(classes) or '-'}",
                           line)
    found = Detectors(
        bucket_s=bucket, retention_s=optional_duration(section, "retention", at) or 7 * 86400,
        agent_classes=tuple(n for n, _ in refs) if "agent_classes" in section else None,
        rate_spike=_rate_spike(section, at, bucket),
        denial_burst=_denial_burst(section, at, bucket),
        novel_pattern=_novel(section, at), off_hours=_off_hours(section, at),
        unusual_resources=_unusual(section, at))
    if found.retention_s < found.history_s:
        raise at.error(f"detectors retention {format_duration(found.retention_s)} is shorter "
                       f"than the longest window {format_duration(found.history_s)}",
                       section.line_of("retention"))
    return found


def _section(parent: LineMap, name: str, at: At) -> tuple[LineMap, At] | None:
    if name not in parent:
        return None
    body = mapping(parent, name, at)
    rule_at = At(at.file, f"detectors.{name}")
    required, optional = _FIELDS[name]
    check_fields(body, rule_at, f"detector {name!r}", required=required, optional=optional)
    return body, rule_at


def _window(body: LineMap, key: str, at: At, bucket: int) -> int:
    seconds = optional_duration(body, key, at) or 0  # required by _FIELDS
    if seconds % bucket:
        raise at.error(f"{key} {format_duration(seconds)} is not a multiple of the detectors' "
                       f"bucket {format_duration(bucket)}", body.line_of(key))
    return seconds


def _number(body: LineMap, key: str, at: At, low: float, high: float | None,
            default: float | None = None) -> float:
    """A number under ``key`` in (low, high] (high None: unbounded)."""
    if key not in body and default is not None:
        return default
    value = body[key]
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= low \
            or (high is not None and value > high):
        bounds = f"greater than {low:g}" + (f" and at most {high:g}" if high is not None else "")
        raise at.error(f"{key!r} must be a number {bounds}; got {value!r}", body.line_of(key))
    return float(value)


def _count(body: LineMap, key: str, at: At, default: int) -> int:
    return optional_positive_int(body, key, at) or default


def _rate_spike(parent: LineMap, at: At, bucket: int) -> RateSpike | None:
    found = _section(parent, RATE_SPIKE, at)
    if found is None:
        return None
    body, rat = found
    window, baseline = _window(body, "window", rat, bucket), _window(body, "baseline", rat, bucket)
    if baseline < window:
        raise rat.error(f"baseline {format_duration(baseline)} is shorter than the window "
                        f"{format_duration(window)}", body.line_of("baseline"))
    history = optional_duration(body, "min_history", rat) or baseline
    if history > baseline:
        raise rat.error(f"min_history {format_duration(history)} is longer than the baseline "
                        f"{format_duration(baseline)}", body.line_of("min_history"))
    return RateSpike(window, baseline, history, _number(body, "factor", rat, 1.0, None),
                     _count(body, "min_requests", rat, 10),
                     _number(body, "severity", rat, 0.0, 1.0),
                     optional_duration(body, "cooldown", rat) or window)


def _denial_burst(parent: LineMap, at: At, bucket: int) -> DenialBurst | None:
    found = _section(parent, DENIAL_BURST, at)
    if found is None:
        return None
    body, rat = found
    window = _window(body, "window", rat, bucket)
    return DenialBurst(window, _count(body, "min_denials", rat, 5),
                       _number(body, "min_ratio", rat, 0.0, 1.0, default=0.5),
                       _number(body, "severity", rat, 0.0, 1.0),
                       optional_duration(body, "cooldown", rat) or window)


def _novel(parent: LineMap, at: At) -> NovelPattern | None:
    found = _section(parent, NOVEL_PATTERN, at)
    if found is None:
        return None
    body, rat = found
    return NovelPattern(_count(body, "min_class_requests", rat, 100),
                        optional_duration(body, "remember", rat) or 30 * 86400,
                        _number(body, "severity", rat, 0.0, 1.0),
                        optional_duration(body, "cooldown", rat) or 60)


def _off_hours(parent: LineMap, at: At) -> OffHours | None:
    found = _section(parent, OFF_HOURS, at)
    if found is None:
        return None
    body, rat = found
    return OffHours(_count(body, "min_requests", rat, 100),
                    _number(body, "max_share", rat, 0.0, 1.0),
                    _number(body, "severity", rat, 0.0, 1.0),
                    optional_duration(body, "cooldown", rat) or HOUR_S)


def _unusual(parent: LineMap, at: At) -> UnusualResources | None:
    found = _section(parent, UNUSUAL_RESOURCES, at)
    if found is None:
        return None
    body, rat = found
    window = optional_duration(body, "window", rat) or 60
    return UnusualResources(window, _count(body, "min_checks", rat, 20),
                            _number(body, "max_new_share", rat, 0.0, 1.0),
                            _count(body, "min_known", rat, 5),
                            optional_duration(body, "remember", rat) or 7 * 86400,
                            _number(body, "severity", rat, 0.0, 1.0),
                            optional_duration(body, "cooldown", rat) or window)
