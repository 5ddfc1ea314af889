"""Behaviour profiles and detectors (pure): windows, baselines, thresholds, cooldowns, storage."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from broker.behaviour.profiles import (
    MAX_PATTERNS,
    ClassView,
    Observation,
    Profile,
    detect,
    observe,
    resource_pattern,
    silence,
)
from broker.policy.detectors import DenialBurst, Detectors, NovelPattern, OffHours, RateSpike

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
NOBODY = ClassView(0, frozenset())
RATE = Detectors(bucket_s=1, rate_spike=RateSpike(window_s=2, baseline_s=20, min_history_s=10,
                                                  factor=8, min_requests=10, severity=0.9,
                                                  cooldown_s=2))


def obs(at: datetime, *, granted: bool = True, scopes: tuple[str, ...] = ("a:b.c",),
        resources: tuple[str, ...] = (), n: int = 0) -> Observation:
    return Observation("agent-1", "fraud-detection", "3.2", f"d-{n}", at, granted, scopes,
                       resources)


def feed(cfg: Detectors, times: list[datetime], profile: Profile | None = None,
         klass: ClassView = NOBODY, **kw: object) -> tuple[Profile | None, list[str]]:
    """Fold observations in order; the detectors that fired, in order."""
    fired: list[str] = []
    for i, at in enumerate(times):
        o = obs(at, n=i, **kw)  # type: ignore[arg-type]
        after = observe(profile, o, cfg)
        found = detect(profile, after, o, cfg, klass)
        profile = silence(after, found, cfg, at)
        fired += [f.detector for f in found]
    return profile, fired


def steady(seconds: int, every: float = 1.0) -> list[datetime]:
    return [T0 + timedelta(seconds=i * every) for i in range(int(seconds / every))]


def burst(start: float, count: int, within: float = 1.0) -> list[datetime]:
    return [T0 + timedelta(seconds=start + i * within / count) for i in range(count)]


def test_twenty_times_the_baseline_fires_the_rate_spike() -> None:
    """1 request/s for 20s, then 20/s: 40 in a 2s window against a baseline of 2."""
    profile, fired = feed(RATE, steady(20))
    assert fired == []
    _, fired = feed(RATE, burst(20, 20), profile)
    assert fired == ["rate_spike"]  # once: the cooldown silences the rest of the burst


def test_the_evidence_says_what_was_seen() -> None:
    """Requests in the window, the baseline per window and the observed factor."""
    profile, _ = feed(RATE, steady(20))
    for i, at in enumerate(burst(20, 20)):
        o = obs(at, n=100 + i)
        after = observe(profile, o, RATE)
        found = detect(profile, after, o, RATE, NOBODY)
        profile = silence(after, found, RATE, at)
        if found:
            ev = found[0].evidence
            assert ev["detector"] == "rate_spike" and ev["threshold_factor"] == 8
            assert ev["baseline_per_window"] == 2.0 and ev["requests"] >= 16
            assert float(ev["factor"]) >= 8 and "x the agent's baseline" in found[0].summary
            return
    raise AssertionError("no finding")


def test_a_rate_below_the_factor_does_not_fire() -> None:
    """Five times the baseline is not ``far above`` a factor of 8."""
    profile, _ = feed(RATE, steady(20))
    _, fired = feed(RATE, burst(20, 5, within=0.5), profile)
    assert fired == []


def test_no_verdict_before_min_history() -> None:
    """An agent seen for less than min_history has no baseline to be judged against."""
    profile, _ = feed(RATE, steady(5))
    _, fired = feed(RATE, burst(5, 40), profile)
    assert fired == []


def test_min_requests_guards_a_quiet_agent() -> None:
    """A near-silent agent that sends a handful is not a spike."""
    profile, _ = feed(RATE, [T0, T0 + timedelta(seconds=15)])
    _, fired = feed(RATE, burst(20, 9), profile)
    assert fired == []


def test_the_cooldown_ends() -> None:
    """After its cooldown a detector can fire again for the same agent."""
    profile, fired = feed(RATE, steady(20) + burst(20, 20))
    assert fired == ["rate_spike"]
    _, again = feed(RATE, burst(23, 40), profile)
    assert again == ["rate_spike"]


def test_buckets_older_than_the_windows_are_dropped() -> None:
    """The profile stays compact: only window + baseline of buckets is kept."""
    profile, _ = feed(RATE, steady(200))
    assert profile is not None and len(profile.buckets) <= 22 and profile.requests == 200


DENY = Detectors(bucket_s=1, denial_burst=DenialBurst(window_s=10, min_denials=4, min_ratio=0.5,
                                                      severity=0.85, cooldown_s=10))


def test_a_burst_of_denials_fires() -> None:
    """Four denials within ten seconds, all of what was asked."""
    _, fired = feed(DENY, burst(0, 4, within=3), granted=False)
    assert fired == ["denial_burst"]


def test_denials_spread_out_or_diluted_do_not_fire() -> None:
    """Denials outside the window, or a minority of many grants, are not a burst."""
    _, fired = feed(DENY, [T0 + timedelta(seconds=11 * i) for i in range(6)], granted=False)
    assert fired == []
    profile, _ = feed(DENY, burst(0, 10, within=2))  # ten grants
    _, fired = feed(DENY, burst(2, 4, within=2), profile, granted=False)
    assert fired == []  # 4 of 14 denied < 0.5


NOVEL = Detectors(novel_pattern=NovelPattern(min_class_requests=50, remember_s=86400,
                                             severity=0.6, cooldown_s=60))


def test_a_pattern_new_to_the_class_fires_once_the_class_has_history() -> None:
    """Unknown scope for a class with history fires; known patterns or a young class do not."""
    o = obs(T0, scopes=("payments:accounts.close",), resources=("acct-12-34",))
    after = observe(None, o, NOVEL)
    known = frozenset({"scope:payments:accounts.close", "resource:acct-#-#"})
    assert detect(None, after, o, NOVEL, ClassView(49, frozenset())) == ()
    assert detect(None, after, o, NOVEL, ClassView(500, known)) == ()
    (found,) = detect(None, after, o, NOVEL, ClassView(500, frozenset({"resource:acct-#-#"})))
    assert found.detector == "novel_pattern"
    assert found.evidence["patterns"] == "scope:payments:accounts.close"


def test_resource_patterns_generalise_numbers() -> None:
    """Account numbers are not patterns: their shape is."""
    assert resource_pattern("acct-4411-0923") == "acct-#-#"
    assert obs(T0, resources=("acct-1", "acct-22")).patterns == ("scope:a:b.c", "resource:acct-#")


HOURS = Detectors(off_hours=OffHours(min_requests=100, max_share=0.02, severity=0.5,
                                     cooldown_s=3600))


def test_a_request_outside_the_usual_hours_fires() -> None:
    """Office-hours history; a 03h UTC request is outside it, a 10h one is not."""
    profile, fired = feed(HOURS, [T0 + timedelta(minutes=5 * i) for i in range(100)])
    assert fired == []  # 09h..17h UTC
    _, fired = feed(HOURS, [T0.replace(hour=12, minute=30)], profile)
    assert fired == []
    night = T0.replace(hour=3) + timedelta(days=1)
    _, fired = feed(HOURS, [night, night + timedelta(minutes=1)], profile)
    assert fired == ["off_hours"]  # once: an hour's cooldown


def test_profile_round_trips_through_its_stored_form() -> None:
    """What Redis holds is exactly the profile (restart-safe)."""
    cfg = replace(RATE, denial_burst=DENY.denial_burst, off_hours=HOURS.off_hours)
    profile, _ = feed(cfg, steady(30) + burst(30, 20), resources=("acct-1",))
    assert profile is not None
    assert Profile.from_json(profile.to_json()) == profile
    assert len(profile.to_json()) < 2000


def test_patterns_are_bounded() -> None:
    """At most MAX_PATTERNS scopes are kept, the most recent ones."""
    profile = None
    for i in range(MAX_PATTERNS + 10):
        profile = observe(profile, obs(T0 + timedelta(seconds=i), scopes=(f"a:b.s{i}",)), RATE)
    assert profile is not None and len(profile.scopes) == MAX_PATTERNS
    assert f"a:b.s{MAX_PATTERNS + 9}" in profile.scopes and "a:b.s0" not in profile.scopes


def test_window_counts_outcomes() -> None:
    """The stats window counts requests, grants and denials."""
    profile, _ = feed(DENY, burst(0, 3, within=1))
    profile, _ = feed(DENY, burst(1, 2, within=1), profile, granted=False)
    assert profile is not None
    _, req, granted, denied = profile.window(int((T0.timestamp() + 2) * 1000), 10_000)
    assert (req, granted, denied) == (5, 3, 2)
