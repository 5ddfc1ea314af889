"""Scope algebra: syntax, segment-aware globs, ceilings."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.scopes import is_glob, is_valid_scope, matches, parse_scope, within
from schemas.events import SCOPE_GLOB_PATTERN, SCOPE_PATTERN

namespaces = st.from_regex(r"\A[a-z][a-z0-9_-]{0,6}\Z")
segments = st.from_regex(r"\A[a-z][a-z0-9_-]{0,6}\Z")
scopes = st.builds(
    lambda ns, segs: f"{ns}:{'.'.join(segs)}",
    namespaces, st.lists(segments, min_size=2, max_size=5),
)


def test_parse_splits_namespace_resource_action() -> None:
    """parse_scope splits namespace, dotted resource and action."""
    parsed = parse_scope("crm:customer.pii.read")
    assert (parsed.namespace, parsed.resource, parsed.action) == ("crm", "customer.pii", "read")
    assert str(parsed) == "crm:customer.pii.read"


@pytest.mark.parametrize("text", [
    "payments", "payments:accounts", "Payments:accounts.read", "payments:accounts..read",
    "payments:accounts.read.", ":accounts.read", "payments:1accounts.read", "payments:a.b c",
])
def test_malformed_scopes_are_invalid(text: str) -> None:
    """Malformed scopes are rejected, with or without globs allowed."""
    assert not is_valid_scope(text)
    assert not is_valid_scope(text, allow_glob=True)
    with pytest.raises(ValueError, match="not a valid scope"):
        parse_scope(text, allow_glob=True)


@pytest.mark.parametrize("glob", ["*", "crm:*", "payments:accounts.*", "*:accounts.read",
                                  "payments:*.read", "payments:accounts.*.read"])
def test_segment_globs_are_valid_only_where_allowed(glob: str) -> None:
    """Whole-segment globs are valid globs but never valid concrete scopes."""
    assert is_glob(glob)
    assert is_valid_scope(glob, allow_glob=True)
    assert not is_valid_scope(glob)
    assert re.match(SCOPE_GLOB_PATTERN, glob)  # also accepted by the wire contract's ceiling
    with pytest.raises(ValueError, match="glob"):
        parse_scope(glob)


@pytest.mark.parametrize("glob", ["payments:acc*", "pay*:accounts.read", "payments:accounts.fr*ze",
                                  "**", "payments:accounts.**", "payments:*:read"])
def test_partial_segment_globs_are_invalid(glob: str) -> None:
    """A '*' must be a whole segment: partial-segment globs are invalid."""
    assert not is_valid_scope(glob, allow_glob=True)


@pytest.mark.parametrize(("pattern", "scope", "expected"), [
    ("payments:accounts.*", "payments:accounts.freeze", True),
    ("payments:accounts.*", "payments:accounts.x.y", True),
    ("payments:accounts.*", "payments:accountsx.freeze", False),
    ("payments:accounts.*", "payments:transactions.read", False),
    ("crm:*", "crm:customer.pii.read", True),
    ("crm:*", "crmx:customer.read", False),
    ("*", "reports:ledger.export", True),
    ("*:accounts.read", "bank:accounts.read", True),
    ("payments:*.read", "payments:accounts.read", True),
    ("payments:*.read", "payments:accounts.x.read", False),
    ("payments:accounts.freeze", "payments:accounts.freeze", True),
    ("payments:accounts.freeze", "payments:accounts.freezer", False),
])
def test_matches_is_segment_aware(pattern: str, scope: str, expected: bool) -> None:
    """Globs match whole segments, never string prefixes."""
    assert matches(pattern, scope) is expected


def test_matches_fails_closed_on_invalid_input() -> None:
    """An invalid pattern or a glob given as the scope matches nothing."""
    assert not matches("payments:acc*", "payments:accounts.read")
    assert not matches("*", "payments:accounts.*")
    assert not matches("*", "not a scope")


def test_within_checks_every_ceiling_entry() -> None:
    """within() is true when any ceiling entry matches, false for an empty ceiling."""
    ceiling = ["payments:transactions.*", "crm:customer.pii.read"]
    assert within("crm:customer.pii.read", ceiling)
    assert within("payments:transactions.read", ceiling)
    assert not within("crm:customer.pii.write", ceiling)
    assert not within("payments:transactions.read", [])


@given(scopes)
def test_generated_scopes_are_valid_and_round_trip(scope: str) -> None:
    """Every scope of the grammar is valid, agrees with the wire pattern and round-trips."""
    assert is_valid_scope(scope) and not is_glob(scope)
    assert re.match(SCOPE_PATTERN, scope)
    assert str(parse_scope(scope)) == scope


@given(scopes)
def test_a_scope_matches_itself_its_namespace_and_star(scope: str) -> None:
    """A scope is matched by itself, '*', its namespace glob, and within([itself])."""
    namespace = parse_scope(scope).namespace
    assert matches(scope, scope) and matches("*", scope) and matches(f"{namespace}:*", scope)
    assert within(scope, [scope])


@given(scopes, st.data())
def test_every_proper_prefix_glob_matches(scope: str, data: st.DataObject) -> None:
    """`ns:a.b.*` matches every scope that continues `ns:a.b` by at least one segment."""
    parsed = parse_scope(scope)
    cut = data.draw(st.integers(min_value=1, max_value=len(parsed.segments) - 1))
    assert matches(f"{parsed.namespace}:{'.'.join(parsed.segments[:cut])}.*", scope)
    assert not matches(f"{parsed.namespace}:{'.'.join(parsed.segments)}.*", scope)


@given(scopes, scopes)
def test_a_glob_never_crosses_namespaces(scope: str, other: str) -> None:
    """A namespace glob never matches a scope of another namespace."""
    ns, other_ns = parse_scope(scope).namespace, parse_scope(other).namespace
    assert matches(f"{ns}:*", other) is (ns == other_ns)


@given(scopes, segments)
def test_a_trailing_glob_does_not_match_a_longer_segment(scope: str, suffix: str) -> None:
    """`ns:a.*` never matches `ns:ax.b`: globs never match across a segment boundary."""
    parsed = parse_scope(scope)
    first, rest = parsed.segments[0], parsed.segments[1:]
    longer = f"{parsed.namespace}:{first}{suffix}.{'.'.join(rest)}"
    assert not matches(f"{parsed.namespace}:{first}.*", longer)
