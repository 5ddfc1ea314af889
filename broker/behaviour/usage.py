"""Unusual resources (pure): how far an agent's reported checks stray from its usual resources.

Imports broker.policy.detectors, broker.behaviour.profiles and stdlib.

An agent's usual set is every resource its checks touched (remembered for the detector's
``remember``). A check is new when its resource is not in that set and the set is big enough
to judge (``min_known``): while an agent is still building its usual set nothing is new. The
detector fires on a window whose checks are numerous enough and mostly new.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from broker.behaviour.profiles import Finding
from broker.policy.detectors import UNUSUAL_RESOURCES, UnusualResources
from broker.policy.model import format_duration


@dataclass(frozen=True)
class UsageWindow:
    """The checks of one agent in the detector's window, as the store counted them."""

    checks: int  # checks in the window
    new: int  # of them, on resources new to the agent at the time
    known: int  # resources in the agent's usual set before the latest report


def new_checks(resources: Sequence[str], known: Collection[str], known_count: int,
               rule: UnusualResources) -> list[bool]:
    """For each checked resource: whether it is new to the agent (never while its usual set
    is smaller than ``min_known``)."""
    if known_count < rule.min_known:
        return [False] * len(resources)
    return [r not in known for r in resources]


def judge(window: UsageWindow, rule: UnusualResources) -> Finding | None:
    """The finding when the window strays too far from the usual resources, else None."""
    if window.checks < rule.min_checks or window.new == 0:
        return None
    share = window.new / window.checks
    if share < rule.max_new_share:
        return None
    summary = (f"{window.new} of {window.checks} checks in {format_duration(rule.window_s)} "
               f"touched resources new to the agent (share {share:.2f}, threshold "
               f"{rule.max_new_share:g}); its usual set holds {window.known} resource(s)")
    return Finding(UNUSUAL_RESOURCES, rule.severity, summary, {
        "detector": UNUSUAL_RESOURCES, "checks": window.checks, "new_checks": window.new,
        "new_share": round(share, 3), "max_new_share": rule.max_new_share,
        "known_resources": window.known, "window_s": rule.window_s})
