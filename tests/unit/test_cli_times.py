"""The CLI's one time format (ISO 8601 UTC with Z, and the time left or elapsed, humanised)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from broker.cli.output import human, stamp, until

NOW = datetime(2026, 12, 5, 20, 49, 6, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (45, "45s"), (59.6, "1m 0s"), (899, "14m 59s"), (3600, "1h 0m"),
    (3 * 3600 + 125, "3h 2m"), (604786.2, "6d 23h"), (7 * 86400, "7d 0h"), (-90, "1m 30s"),
])
def test_durations_read_as_their_two_largest_units(seconds: float, text: str) -> None:
    """No more 'in 604786.2s': days and hours, hours and minutes, minutes and seconds."""
    assert human(seconds) == text


def test_a_future_time_shows_iso_utc_and_the_time_left() -> None:
    """The format the operator sees everywhere: ISO 8601 with Z, then (in ...)."""
    assert until(NOW + timedelta(minutes=14, seconds=59), NOW) == \
        "2026-12-05T21:04:05Z (in 14m 59s)"


def test_a_past_time_shows_how_long_ago_and_any_zone_becomes_utc() -> None:
    """Elapsed time reads '... ago'; an instant with another offset is shown in UTC."""
    paris = timezone(timedelta(hours=1))
    then = (NOW - timedelta(hours=3, minutes=2)).astimezone(paris)
    assert until(then, NOW) == "2026-12-05T17:47:06Z (3h 2m ago)"
    assert stamp(then) == "2026-12-05T17:47:06Z"


def test_no_time_prints_the_placeholder() -> None:
    """An absent time prints '-' (or the caller's word, e.g. 'never')."""
    assert until(None, NOW) == "-" and until(None, NOW, never="never") == "never"
