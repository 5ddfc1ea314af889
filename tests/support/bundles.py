"""Agent classes the suites add to the shipped fraud policy for their test bundles.

Imports stdlib only.
"""

from __future__ import annotations

from typing import Any


def bulk_class(policy: dict[str, Any]) -> None:
    """A class whose grants last minutes: bursts on a loaded machine must not go stale."""
    policy["agent_classes"]["bulk-test"] = {
        "baseline": [],
        "ceiling": ["payments:accounts.*", "crm:customer.pii.read"],
    }
    policy["escalation_rules"].append(
        {
            "id": "bulk-test-freeze",
            "agent_classes": ["bulk-test"],
            "scopes": ["payments:accounts.freeze", "crm:customer.pii.read"],
            "when": "request.confidence >= agent.confidence_threshold",
            "max_duration": "10m",
            "max_total_duration": "15m",  # renewals (the redelivery test renews one)
            "budgets": {"payments:accounts.freeze": 3},  # the budget tests count against it
        }
    )
