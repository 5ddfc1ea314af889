"""The policy's ``detectors`` section: thresholds parsed, bad values refused with file/line/rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import PolicyError
from broker.policy import load_policy
from tests.support.policy_files import BASE, FRAUD, line_of, write

DETECTORS = """\
detectors:
  bucket: 1s
  retention: 1h
  agent_classes: [fraud-detection]
  rate_spike: {window: 2s, baseline: 20s, min_history: 6s, factor: 8, min_requests: 12,
               severity: 0.9}
  denial_burst: {window: 10s, min_denials: 4, min_ratio: 0.5, severity: 0.85}
  novel_pattern: {min_class_requests: 50, remember: 1d, severity: 0.6}
  off_hours: {min_requests: 100, max_share: 0.02, severity: 0.5}
"""


def with_detectors(section: str) -> str:
    head, agents = BASE.split("---\n")
    return head + section + "---\n" + agents


def test_detectors_section_is_parsed(tmp_path: Path) -> None:
    """Every threshold of the section reaches the compiled policy."""
    path = write(tmp_path, with_detectors(DETECTORS))
    d = load_policy(path).detectors
    assert d is not None and d.bucket_s == 1 and d.retention_s == 3600
    assert d.rate_spike is not None and (d.rate_spike.window_s, d.rate_spike.baseline_s,
                                         d.rate_spike.min_history_s) == (2, 20, 6)
    assert d.rate_spike.factor == 8.0 and d.rate_spike.min_requests == 12
    assert d.rate_spike.cooldown_s == 2  # defaults to the window
    assert d.denial_burst is not None and d.denial_burst.min_denials == 4
    assert d.novel_pattern is not None and d.novel_pattern.remember_s == 86400
    assert d.off_hours is not None and d.off_hours.cooldown_s == 3600
    assert d.watches("fraud-detection") and not d.watches("reporting")
    assert d.history_s == 22


def test_a_policy_without_detectors_watches_nothing(tmp_path: Path) -> None:
    """The section is optional."""
    assert load_policy(write(tmp_path, BASE)).detectors is None


def test_fraud_bundle_uses_the_detectors() -> None:
    """The shipped fraud policy watches its agents with every detector."""
    d = load_policy(FRAUD).detectors
    assert d is not None and set(d.enabled) == {"rate_spike", "denial_burst", "novel_pattern",
                                                "off_hours", "unusual_resources"}


@pytest.mark.parametrize(("old", "new", "needle", "message", "rule"), [
    ("factor: 8,", "factor: 1,", "factor: 1", "'factor' must be a number greater than 1",
     "detectors.rate_spike"),
    ("severity: 0.85}", "severity: 1.5}", "severity: 1.5", "'severity' must be a number",
     "detectors.denial_burst"),
    ("window: 2s,", "window: 1500ms,", "window: 1500ms", "bad duration", "detectors.rate_spike"),
    ("bucket: 1s", "bucket: 3s", "rate_spike:", "not a multiple of the detectors' bucket",
     "detectors.rate_spike"),
    ("baseline: 20s,", "baseline: 1s,", "baseline: 1s", "shorter than the window",
     "detectors.rate_spike"),
    ("min_history: 6s,", "min_history: 30s,", "min_history", "longer than the baseline",
     "detectors.rate_spike"),
    ("min_denials: 4,", "min_denials: 0,", "min_denials", "must be a positive integer",
     "detectors.denial_burst"),
    ("max_share: 0.02,", "threshold: 0.02,", "threshold: 0.02", "unknown field 'threshold'",
     "detectors.off_hours"),
    ("off_hours: {min_requests: 100, max_share: 0.02, severity: 0.5}",
     "off_hours: {min_requests: 100, max_share: 0.02}", "off_hours", "missing field 'severity'",
     "detectors.off_hours"),
    ("agent_classes: [fraud-detection]", "agent_classes: [nobody]", "[nobody]",
     "unknown agent class 'nobody'", None),
    ("retention: 1h", "retention: 10s", "retention", "shorter than the longest window", None),
    ("  bucket: 1s", "  bucket: 1s\n  spike: {}", "spike: {}", "unknown field 'spike'", None),
])
def test_bad_detectors_name_file_line_and_rule(
    tmp_path: Path, old: str, new: str, needle: str, message: str, rule: str | None
) -> None:
    """A bad threshold is refused before any worker runs, saying where and which detector."""
    assert old in DETECTORS
    text = with_detectors(DETECTORS.replace(old, new))
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text))
    err = info.value
    assert message in str(err)
    assert err.line == line_of(text, needle)
    assert err.file is not None and err.file.endswith("bad.yaml")
    assert err.rule == rule
