"""Graduated grants and approval rules: tier choice, clamps, withheld grants, loader errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from broker.errors import PolicyError
from broker.policy import Policy, RiskContext, load_policy
from broker.policy.loader import load_policy_files
from schemas.events import EscalationRequested

BUNDLE = Path(__file__).resolve().parents[3] / "policies" / "graduated"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE, PII, UNFREEZE = "payments:accounts.freeze", "crm:customer.pii.read", \
    "payments:accounts.unfreeze"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(BUNDLE)


def evaluate(policy: Policy, **changes: Any) -> Any:
    fields: dict[str, Any] = {
        "request_id": "req-1", "agent_id": "fraud-detector-7", "scopes": (FREEZE, PII),
        "resources": ("acct-1",), "duration_s": 900, "reason": "pattern",
        "confidence": 0.97, "risk_score": 0.9, "requested_at": NOW,
    }
    req = EscalationRequested(**(fields | changes))
    return policy.evaluate(req, policy.agent(req.agent_id), RiskContext(), NOW)


def test_confident_band_grants_both_scopes_for_fifteen_minutes(policy: Policy) -> None:
    """confidence >= 0.95: freeze and PII, 15 minutes, no approval; the tier is named."""
    result = evaluate(policy)
    assert result.granted == (FREEZE, PII) and result.approval is None
    assert result.duration_s == 900 and result.tiers == ("fraud-graduated/confident",)


def test_unsure_band_grants_read_only_for_five_minutes(policy: Policy) -> None:
    """0.8 <= confidence < 0.95: PII alone is granted outright, clamped by the tier to 5m."""
    result = evaluate(policy, scopes=(PII,), confidence=0.85)
    assert result.granted == (PII,) and result.approval is None
    assert result.duration_s == 300 and result.clamped_by.startswith("tier unsure")
    assert result.tiers == ("fraud-graduated/unsure",)


def test_unsure_band_withholds_a_freeze_until_two_of_three_approve(policy: Policy) -> None:
    """A freeze in the unsure band needs approval: nothing granted, the whole request waits."""
    result = evaluate(policy, confidence=0.85)
    assert result.granted == ()
    need = result.approval
    assert need is not None and need.quorum == 2 and need.window_s == 600
    assert need.approvers == ("operator:oncall", "verifier-1", "verifier-2")
    assert need.scopes == (FREEZE, PII) and need.rules == ("fraud-graduated/unsure",)
    assert result.duration_s == 300  # the duration the approved grant will get
    assert {d.scope for d in result.denied} == {FREEZE, PII}


def test_low_band_denies_naming_the_tiers_tried(policy: Policy) -> None:
    """Below 0.8 no tier holds: default deny, saying which tiers were considered."""
    result = evaluate(policy, confidence=0.5)
    assert result.granted == () and result.approval is None
    assert all(d.rule == "default-deny" for d in result.denied)
    assert "no tier of rule fraud-graduated matched" in result.denied[0].reason


def test_ceiling_still_caps_a_graduated_rule(policy: Policy) -> None:
    """A scope outside the class ceiling is denied whatever the tier."""
    result = evaluate(policy, scopes=("payments:transfers.create",))
    assert result.denied[0].rule == "ceiling:fraud-detection"


def test_rule_level_approval(policy: Policy) -> None:
    """A rule with approval and no tiers withholds every scope it grants."""
    result = evaluate(policy, scopes=(UNFREEZE,), duration_s=600)
    assert result.approval is not None and result.approval.quorum == 1
    assert result.approval.rules == ("unfreeze-needs-approval",)
    assert result.duration_s == 120  # the rule's max_duration still caps it


HEAD = """apiVersion: permbroker/v1
kind: Policy
name: t
defaults: {max_duration: 15m}
agent_classes:
  c: {ceiling: ["payments:accounts.*"]}
escalation_rules:
  - id: r
    agent_classes: [c]
    scopes: [payments:accounts.freeze]
    when: "true"
"""


@pytest.mark.parametrize(("tail", "message", "line"), [
    ("    tiers:\n      - {name: a, when: 'true', scopes: [payments:accounts.read]}\n",
     "not among its rule's scopes", 13),
    ("    approval: {quorum: 3, approvers: [a, b], window: 5m}\n",
     "quorum 3 is more than the 2 approver(s)", 12),
    ("    approval: {quorum: 1, approvers: [a, a], window: 5m}\n", "listed twice", 12),
    ("    tiers:\n      - {name: a, when: 'true', scopes: [payments:accounts.freeze],"
     " max_duration: 1h}\n", "exceeds the rule's max_duration", 13),
    ("    tiers:\n      - {name: a, when: 'nope.x > 1', scopes: [payments:accounts.freeze]}\n",
     "references 'nope'", 13),
    ("    approval: {quorum: 1, approvers: [a], window: 5m}\n"
     "    tiers:\n      - {name: a, when: 'true', scopes: [payments:accounts.freeze]}\n",
     "either tiers", 12),
    ("    tiers:\n      - {name: a, when: 'true'}\n", "grants nothing", 13),
])
def test_loader_names_file_line_and_rule(tail: str, message: str, line: int) -> None:
    """Bad tiers and approvals are refused with the file, the line and the rule."""
    with pytest.raises(PolicyError) as info:
        load_policy_files([("p.yaml", (HEAD + tail).encode())], "mem")
    text = str(info.value)
    assert message in text and f"p.yaml:{line} (rule r)" in text
