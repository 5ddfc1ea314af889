"""Policy files for loader tests: a minimal two-document bundle, and where an error must point.

Imports broker (policy, errors).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.errors import PolicyError
from broker.policy import load_policy

FRAUD = Path(__file__).resolve().parents[2] / "policies" / "fraud"

BASE = """\
apiVersion: permbroker/v1
kind: Policy
name: test
defaults:
  max_duration: 15m
agent_classes:
  fraud-detection:
    baseline: [payments:transactions.read]
    ceiling: [payments:transactions.*, payments:accounts.*, crm:customer.pii.read]
escalation_rules:
  - id: fraud-freeze
    agent_classes: [fraud-detection]
    scopes: [payments:accounts.freeze, crm:customer.pii.read]
    when: request.confidence >= agent.confidence_threshold
    max_duration: 20s
deny_rules:
  - id: no-pii
    scopes: ["crm:*"]
    when: risk.agent >= 0.7
    reason: risky agent
revocation_rules:
  - id: revoke-anomaly
    when: signal.kind == "behaviour_anomaly"
    action: revoke_all
    quarantine: 10m
---
apiVersion: permbroker/v1
kind: Agents
agents:
  - agent_id: fraud-detector-7
    agent_class: fraud-detection
    owner: fraud-ops@example.com
    model: {name: fraud-gbm, version: "3.2"}
"""


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    """``text`` written to ``tmp_path/name``."""
    path = tmp_path / name
    path.write_text(text)
    return path


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


def load_error(tmp_path: Path, text: str) -> tuple[PolicyError, Path]:
    """The PolicyError loading ``text`` raises, and the file it was written to."""
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    return info.value, path


def assert_at(err: PolicyError, path: Path, line: int, rule: str | None) -> None:
    """The error names ``path``, ``line`` and ``rule``, and its message starts with them."""
    assert (err.file, err.line, err.rule) == (str(path), line, rule)
    prefix = f"{path}:{line}" + (f" (rule {rule})" if rule else "") + ": "
    assert str(err).startswith(prefix), str(err)
