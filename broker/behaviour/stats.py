"""One agent's behaviour profile as a report (pure). Imports broker.behaviour/policy, stdlib.

What ``permbroker agents stats ID`` and ``GET /v1/operator/agents/{id}/stats`` show: absolute
times (UTC), counts in the policy's detector windows ending now, the hour-of-day histogram,
scopes and resource patterns with when each was last used, and when the profile expires.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from broker.behaviour.profiles import Profile, ms
from broker.policy.detectors import Detectors

DEFAULT_WINDOWS = (60, 600)


def _at(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


def windows_of(cfg: Detectors | None) -> tuple[int, ...]:
    """The windows to report (seconds): those the policy's detectors judge by."""
    if cfg is None:
        return DEFAULT_WINDOWS
    spans = [cfg.bucket_s]
    if cfg.rate_spike is not None:
        spans += [cfg.rate_spike.window_s, cfg.rate_spike.baseline_s]
    if cfg.denial_burst is not None:
        spans.append(cfg.denial_burst.window_s)
    return tuple(sorted(set(spans)))


def report(agent_id: str, profile: Profile, now: datetime, cfg: Detectors | None,
           ttl_ms: int) -> dict[str, Any]:
    """The profile of ``agent_id`` as of ``now`` (``ttl_ms``: what its Redis key has left)."""
    now_ms = ms(now)
    windows = []
    for seconds in windows_of(cfg):
        start, requests, granted, denied = profile.window(now_ms, seconds * 1000)
        windows.append({"window_s": seconds, "from": _at(start), "to": now.isoformat(),
                        "requests": requests, "granted": granted, "denied": denied,
                        "per_minute": round(requests * 60 / seconds, 2)})
    return {
        "agent_id": agent_id, "agent_class": profile.agent_class,
        "model_version": profile.model_version, "as_of": now.isoformat(),
        "first_seen": _at(profile.first_ms), "last_seen": _at(profile.last_ms),
        "totals": {"requests": profile.requests, "granted": profile.granted,
                   "denied": profile.denied},
        "windows": windows,
        "hours_utc": {f"{h:02d}": c for h, c in enumerate(profile.hours) if c},
        "scopes": {s: _at(t) for s, t in sorted(profile.scopes.items())},
        "resource_patterns": {r: _at(t) for r, t in sorted(profile.resources.items())},
        "detectors_silent_until": {d: _at(t) for d, t in sorted(profile.fired.items())
                                   if t > now_ms},
        "expires_at": (now + timedelta(milliseconds=ttl_ms)).isoformat() if ttl_ms > 0 else None,
        "bucket_s": profile.bucket_ms // 1000,
    }


def window_buckets(cfg: Detectors, now: datetime) -> list[tuple[int, list[int]]]:
    """For each reported window: its length (s) and the start (ms) of each of its buckets."""
    bucket = cfg.bucket_s * 1000
    last = ms(now) - ms(now) % bucket
    return [(seconds, [last - i * bucket for i in range(seconds * 1000 // bucket)])
            for seconds in windows_of(cfg)]


def group_report(agent_class: str, model_version: str, now: datetime,
                 counts: list[tuple[int, list[int], tuple[int, int, int]]]) -> dict[str, Any]:
    """The class and model version's counts per window (``counts``: window s, its bucket
    starts, and (requests, granted, denied) over them)."""
    windows = []
    for seconds, starts, (requests, granted, denied) in counts:
        windows.append({"window_s": seconds, "from": _at(min(starts)), "to": now.isoformat(),
                        "requests": requests, "granted": granted, "denied": denied,
                        "per_minute": round(requests * 60 / seconds, 2)})
    return {"agent_class": agent_class, "model_version": model_version,
            "as_of": now.isoformat(), "windows": windows}
