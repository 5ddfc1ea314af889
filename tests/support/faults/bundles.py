"""The fault suite's policy bundles: the fraud policy plus test classes (one rate-limited), and
the property model's three agents. Imports tests.support."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.bundles import bulk_class
from tests.support.faults.model import spec

ROOT = Path(__file__).resolve().parents[3]
POOL = 1000
CLASSES = (
    ("f", "fraud-detection", 0.9),
    ("r", "reporting", 0.6),
    ("b", "bulk-test", 0.5),
    ("x", "flood-test", 0.5),
)
FLOOD_LIMIT = {"requests": 20, "per": "1s"}


def flood_class(policy: dict[str, Any]) -> None:
    """A class with a request rate limit and long grants (the flood test's agents)."""
    policy["agent_classes"]["flood-test"] = {
        "baseline": [],
        "ceiling": ["payments:accounts.*"],
        "rate_limit": dict(FLOOD_LIMIT),
    }
    policy["escalation_rules"].append({
        "id": "flood-test-freeze",
        "agent_classes": ["flood-test"],
        "scopes": ["payments:accounts.freeze"],
        "when": "request.confidence >= agent.confidence_threshold",
        "max_duration": "10m",
    })


def write_bundle(bundle: Path, tag: str, pool: int = POOL) -> Path:
    """The fraud policy plus bulk-test and flood-test classes, and a pool of agents per class."""
    bundle.mkdir(parents=True, exist_ok=True)
    policy = yaml.safe_load((ROOT / "policies" / "fraud" / "policy.yaml").read_text())
    bulk_class(policy)
    flood_class(policy)
    # The fault suite measures the rate limit, recovery and hostile input with fixed outcomes;
    # the fraud bundle's behaviour detectors would (rightly) revoke a flooding or probing agent
    # and change those outcomes. They are tested in tests/integration/behaviour/test_behaviour.py.
    policy.pop("detectors", None)
    (bundle / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    lines = ["apiVersion: permbroker/v1", "kind: Agents", "agents:"]
    for n in range(pool):
        for suffix, cls, threshold in CLASSES:
            lines += [
                f"  - agent_id: t{tag}-{suffix}{n:03d}",
                f"    agent_class: {cls}",
                "    owner: tests@example.com",
                "    model: {name: test-model, version: '1.0', digest: 'sha256:00'}",
                f"    confidence_threshold: {threshold}",
            ]
    (bundle / "agents.yaml").write_text("\n".join(lines) + "\n")
    return bundle


def props_bundle(bundle: Path) -> Path:
    """The shipped fraud policy with the model's three agents (two fraud, one reporting)."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "policy.yaml").write_text((ROOT / "policies" / "fraud" / "policy.yaml").read_text())
    agents = [{"agent_id": agent, "agent_class": cls, "owner": "props@example.com",
               "model": {"name": "m", "version": "1", "digest": "sha256:00"},
               "confidence_threshold": 0.9 if cls == spec.FRAUD else 0.6}
              for agent, cls in spec.AGENTS.items()]
    (bundle / "agents.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "permbroker/v1", "kind": "Agents", "agents": agents}, sort_keys=False))
    return bundle
