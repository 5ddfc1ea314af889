"""The policy's degraded section: fail closed by default, a bounded grace per namespace."""

from __future__ import annotations

from pathlib import Path

from broker.policy import load_policy
from tests.support.policy_files import BASE, assert_at, line_of, load_error, write

SECTION = """\
degraded:
  payments: fail_closed
  crm:
    grace: 2m
"""


def with_section(section: str) -> str:
    """BASE with ``section`` added to its Policy document (before the deny rules)."""
    return BASE.replace("deny_rules:", section + "deny_rules:", 1)


def test_grace_per_namespace_and_fail_closed_by_default(tmp_path: Path) -> None:
    """A grace bound is kept in seconds; a namespace named fail_closed or not named has none."""
    policy = load_policy(write(tmp_path, with_section(SECTION)))
    assert policy.degraded_grace_s == {"crm": 120}
    assert load_policy(write(tmp_path, BASE, "plain.yaml")).degraded_grace_s == {}


def test_a_bad_duration_names_file_line_and_namespace(tmp_path: Path) -> None:
    """A malformed grace points at its line and names the namespace as the rule."""
    text = with_section(SECTION.replace("grace: 2m", "grace: soon"))
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "grace: soon"), "degraded.crm")
    assert "bad duration 'soon' for 'grace'" in err.message


def test_an_unknown_mode_or_field_is_refused(tmp_path: Path) -> None:
    """Only fail_closed or a mapping with grace is accepted, and nothing else in it."""
    text = with_section(SECTION.replace("payments: fail_closed", "payments: fail_open"))
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "payments: fail_open"), "degraded.payments")
    assert "must be 'fail_closed' or a mapping with 'grace: <duration>'" in err.message
    text = with_section(SECTION.replace("grace: 2m", "grace: 2m\n    forever: true"))
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "forever: true"), "degraded.crm")
    assert "unknown field 'forever' in the degraded mode of 'crm'" in err.message


def test_a_grace_longer_than_an_hour_is_refused(tmp_path: Path) -> None:
    """An outage longer than an hour needs an operator, not a timer."""
    text = with_section(SECTION.replace("grace: 2m", "grace: 2h"))
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "grace: 2h"), "degraded.crm")
    assert "longer than 3600s" in err.message


def test_a_namespace_that_is_no_scope_prefix_is_refused(tmp_path: Path) -> None:
    """A namespace must be spelled as a scope's prefix (it names a grant topic)."""
    text = with_section(SECTION.replace("crm:\n", "crm.eu:\n"))
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "crm.eu:"), "degraded.crm.eu")
    assert "bad namespace 'crm.eu'" in err.message
