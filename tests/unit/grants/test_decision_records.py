"""The compact decision record: round trip, published flag in place, legacy JSON still read."""

from __future__ import annotations

import pytest

from broker.adapters.redis import records

DECISION = (
    b'{"decision_id":"decision-1","request_id":"req-1","agent_id":"fraud-7","outcome":"granted",'
    b'"granted_scopes":["payments:accounts.freeze"],"resources":["acct-1"],"denied":[],'
    b'"grant_id":"grant-1","expires_at":"2026-01-01T00:00:20Z","duration_s":20,'
    b'"clamped_by":null,"matched_rules":["r"],"reasons":["granted"],'
    b'"policy_revision":"sha256:ab","decided_at":"2026-01-01T00:00:00Z",'
    b'"consistency_token":null}'
)


def test_a_record_round_trips_and_is_smaller_than_its_json() -> None:
    """pack/unpack gives back the exact JSON, unpublished, in fewer bytes."""
    packed = records.pack(DECISION)
    assert records.unpack(packed) == (DECISION, False)
    assert len(packed) < len(DECISION) * 0.6


def test_the_published_flag_is_the_first_byte() -> None:
    """Flipping byte 0 (what SETRANGE does in Redis) marks the record published."""
    packed = records.pack(DECISION)
    assert records.unpack(records.PUBLISHED + packed[1:]) == (DECISION, True)
    assert records.unpack(records.pack(DECISION, published=True))[1] is True


def test_a_legacy_json_record_is_read_as_is() -> None:
    """A record written before the compact form: its JSON, published unknown (None)."""
    assert records.unpack(DECISION) == (DECISION, None)


def test_an_unknown_format_is_refused() -> None:
    """A format byte this code does not know is an error, never a guess."""
    with pytest.raises(ValueError, match="format"):
        records.unpack(b"0\x09garbage")
