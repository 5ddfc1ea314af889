"""Console sessions end with their assertion, CSRF tokens compare exactly, assets are pinned."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.adapters.crypto.assertions import Verified
from broker.api.console.session import Sessions, csrf_ok
from broker.identity.rules import AssertionClaims, Principal

STATIC = Path(__file__).resolve().parents[3] / "broker" / "api" / "console" / "static"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _verified(life_s: int) -> Verified:
    iat = int(NOW.timestamp())
    claims = AssertionClaims(iss="operator:alice", aud="permbroker-api", iat=iat,
                             exp=iat + life_s, jti="j-1", htm="POST", htu="/console/login")
    return Verified(Principal("operator:alice", "operator", "k1"), claims, "token")


def test_a_session_lives_exactly_as_long_as_its_assertion() -> None:
    """Found until the assertion's exp, forgotten from then on; sign-out forgets it at once."""
    sessions = Sessions()
    sid, session = sessions.open(_verified(120))
    assert session.name == "alice" and session.left_s(NOW) == 120
    assert sessions.get(sid, NOW + timedelta(seconds=119)) is session
    assert sessions.get(sid, NOW + timedelta(seconds=120)) is None
    other, _ = sessions.open(_verified(120))
    sessions.close(other)
    assert sessions.get(other, NOW) is None
    assert sessions.get(None, NOW) is None and sessions.get("", NOW) is None


def test_csrf_tokens_must_match_and_a_missing_one_never_does() -> None:
    """The same token passes; another, an empty or a missing one does not."""
    assert csrf_ok("abc", "abc")
    assert not csrf_ok("abc", "abd") and not csrf_ok("abc", "") and not csrf_ok("abc", None)
    assert not csrf_ok("", "")


def test_the_vendored_scripts_are_the_pinned_releases() -> None:
    """htmx and its SSE extension match SHA256SUMS, with their licences beside them."""
    for line in (STATIC / "SHA256SUMS").read_text("utf-8").splitlines():
        digest, name = line.split()
        assert hashlib.sha256((STATIC / name).read_bytes()).hexdigest() == digest, name
    assert (STATIC / "LICENSE.htmx").is_file() and (STATIC / "LICENSE.htmx-ext-sse").is_file()
