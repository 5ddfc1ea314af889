"""An operator names one grant by its whole id or a prefix of exactly one id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.grants.selection import resolve_grant
from schemas.events import GrantIssued

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def grant(grant_id: str) -> GrantIssued:
    return GrantIssued(grant_id=grant_id, agent_id="a-1", request_id=f"r-{grant_id}",
                       scopes=("payments:accounts.freeze",), resources=(), issued_at=NOW,
                       expires_at=NOW + timedelta(minutes=5), policy_revision="p", rules=("r",))


GRANTS = [grant("g-abc1"), grant("g-abc2"), grant("g-xyz"), grant("g-x")]


@pytest.mark.parametrize(("ref", "found", "candidates"), [
    ("g-xyz", "g-xyz", ()),  # whole id
    ("g-xy", "g-xyz", ()),  # unique prefix
    ("g-abc1", "g-abc1", ()),
    ("g-x", "g-x", ()),  # a whole id wins over the longer ids it starts
    ("g-abc", None, ("g-abc1", "g-abc2")),  # ambiguous: the candidates, sorted
    ("g-", None, ("g-abc1", "g-abc2", "g-x", "g-xyz")),
    ("g-q", None, ()),  # names nothing
    ("", None, ()),  # an empty reference names nothing, never "every grant"
])
def test_resolve_grant(ref: str, found: str | None, candidates: tuple[str, ...]) -> None:
    """Whole id or unique prefix resolves; an ambiguous prefix lists its candidates."""
    grant_, listed = resolve_grant(ref, GRANTS)
    assert (grant_.grant_id if grant_ else None, listed) == (found, candidates)
