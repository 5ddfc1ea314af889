"""The behaviour report (stats) and the Prometheus family: absolute times, bounded labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from broker.behaviour.profiles import Observation, observe
from broker.behaviour.stats import (
    DEFAULT_WINDOWS,
    group_report,
    report,
    window_buckets,
    windows_of,
)
from broker.policy.detectors import DenialBurst, Detectors, RateSpike
from streams.analytics import BehaviourCollector

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
CFG = Detectors(bucket_s=1, rate_spike=RateSpike(2, 20, 10, 8.0, 10, 0.9, 2),
                denial_burst=DenialBurst(10, 4, 0.5, 0.85, 10))


def test_report_counts_windows_ending_now_with_absolute_times() -> None:
    """Counts per detector window, hours, scopes and expiry, every time absolute UTC."""
    profile = None
    for i in range(6):
        o = Observation("a-1", "fraud-detection", "3.2", f"d{i}", T0 + timedelta(seconds=3 * i),
                        i % 2 == 0, ("payments:accounts.freeze",), ("acct-77",))
        profile = observe(profile, o, CFG)
    assert profile is not None
    now = T0 + timedelta(seconds=16)
    data = report("a-1", profile, now, CFG, ttl_ms=60_000)
    assert [w["window_s"] for w in data["windows"]] == [1, 2, 10, 20]
    ten = data["windows"][2]
    assert (ten["requests"], ten["granted"], ten["denied"]) == (3, 1, 2)  # 9 and 15 s denied
    assert ten["from"] == (T0 + timedelta(seconds=7)).isoformat() and ten["per_minute"] == 18
    assert data["totals"] == {"requests": 6, "granted": 3, "denied": 3}
    assert data["hours_utc"] == {"09": 6} and data["resource_patterns"] == {
        "acct-#": (T0 + timedelta(seconds=15)).isoformat()}
    assert data["expires_at"] == (now + timedelta(seconds=60)).isoformat()
    assert data["first_seen"] == T0.isoformat()


def test_windows_without_detectors_fall_back_to_defaults() -> None:
    """A policy without detectors still shows a profile kept earlier."""
    assert windows_of(None) == DEFAULT_WINDOWS


def test_metrics_are_labelled_by_class_and_model_version_only() -> None:
    """permbroker_behaviour_events_total carries class, model version and kind, no agent id."""
    registry = CollectorRegistry()
    counts = {("fraud-detection", "3.2", "requests"): 7,
              ("fraud-detection", "3.2", "signal_rate_spike"): 1}
    registry.register(BehaviourCollector(SimpleNamespace(counts=counts)))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert ('permbroker_behaviour_events_total{agent_class="fraud-detection",kind="requests",'
            'model_version="3.2"} 7.0') in text
    assert "signal_rate_spike" in text and "agent_id" not in text


def test_class_windows_cover_their_buckets_ending_now() -> None:
    """Each window lists exactly its buckets, the newest holding ``now``."""
    now = T0 + timedelta(seconds=16, milliseconds=400)
    plan = dict(window_buckets(CFG, now))
    end = int((T0 + timedelta(seconds=16)).timestamp() * 1000)
    assert plan[2] == [end, end - 1000] and len(plan[20]) == 20 and max(plan[20]) == end
    data = group_report("fraud-detection", "3.2", now, [(2, plan[2], (4, 3, 1))])
    (w,) = data["windows"]
    assert (w["requests"], w["granted"], w["denied"], w["per_minute"]) == (4, 3, 1, 120)
    assert w["from"] == (T0 + timedelta(seconds=15)).isoformat()
