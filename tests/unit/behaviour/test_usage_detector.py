"""The unusual-resources detector, pure parts: its policy section, what counts as new, and
when a window is flagged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.behaviour.usage import UsageWindow, judge, new_checks
from broker.errors import PolicyError
from broker.policy import load_policy
from broker.policy.detectors import UnusualResources

ROOT = Path(__file__).resolve().parents[3]
RULE = UnusualResources(window_s=60, min_checks=20, max_new_share=0.5, min_known=5,
                        remember_s=86400, severity=0.9, cooldown_s=60)


def test_the_shipped_policy_configures_it(tmp_path: Path) -> None:
    """The fraud bundle's detectors section loads it; a share above 1 is refused."""
    loaded = load_policy(ROOT / "policies" / "fraud").detectors
    assert loaded is not None and "unusual_resources" in loaded.enabled
    assert loaded.unusual_resources == UnusualResources(60, 20, 0.5, 5, 7 * 86400, 0.9, 60)
    bundle = tmp_path / "fraud"
    shutil.copytree(ROOT / "policies" / "fraud", bundle)
    policy = bundle / "policy.yaml"
    policy.write_text(policy.read_text().replace("max_new_share: 0.5", "max_new_share: 1.5"))
    with pytest.raises(PolicyError, match="max_new_share"):
        load_policy(bundle)


def test_nothing_is_new_while_the_usual_set_is_too_small() -> None:
    """Below min_known every check is learning; above it, unknown resources are new."""
    assert new_checks(["a", "b"], set(), 0, RULE) == [False, False]
    assert new_checks(["a", "z"], {"a", "b", "c", "d", "e"}, 5, RULE) == [False, True]


def test_a_window_mostly_new_is_flagged_with_its_evidence() -> None:
    """30 of 36 new: flagged with counts; too few checks, or a small share: not flagged."""
    found = judge(UsageWindow(checks=36, new=30, known=6), RULE)
    assert found is not None and found.severity == 0.9
    assert found.evidence["detector"] == "unusual_resources"
    assert (found.evidence["checks"], found.evidence["new_checks"],
            found.evidence["known_resources"]) == (36, 30, 6)
    assert judge(UsageWindow(checks=19, new=19, known=6), RULE) is None  # too few checks
    assert judge(UsageWindow(checks=40, new=19, known=6), RULE) is None  # share under 0.5
    assert judge(UsageWindow(checks=36, new=0, known=6), RULE) is None  # the usual work
