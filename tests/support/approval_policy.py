"""Approval and graduated-grant rules added to the session's test policy, with their agents.

Imports broker.adapters.crypto.keystore (the test operator's principal). Requesters ``t<run>-a<n>``
(class approval-test) and ``t<run>-g<n>`` (graduated-test); verifier agents
``t<run>-v000..v002`` (class reporting) and the test operator vote.
"""

from __future__ import annotations

from typing import Any

from broker.adapters.crypto.keystore import operator_name

CEILING = ["payments:accounts.*", "crm:customer.pii.read"]
REQUESTERS = 40
DELEGATE = 39  # the approval-test agent that receives delegations held for approval


def verifier(run_id: str, n: int) -> str:
    """The id of verifier agent ``n``."""
    return f"t{run_id}-v{n:03d}"


def requester(run_id: str, kind: str, n: int) -> str:
    """An approval-test (``a``) or graduated-test (``g``) agent."""
    return f"t{run_id}-{kind}{n:03d}"


def add_approval_rules(policy: dict[str, Any], run_id: str) -> list[str]:
    """Add the classes and rules; return the Agents-document lines of their agents."""
    v = [verifier(run_id, n) for n in range(3)]
    policy["agent_classes"]["approval-test"] = {"ceiling": CEILING}
    policy["agent_classes"]["graduated-test"] = {"ceiling": CEILING}
    approval = {"quorum": 2, "approvers": v, "window": "5m"}
    policy["escalation_rules"] += [
        {"id": "appr-freeze", "agent_classes": ["approval-test"],
         "scopes": ["payments:accounts.freeze"], "when": "true", "max_duration": "10m",
         "resources": "any", "approval": approval},
        {"id": "appr-unfreeze", "agent_classes": ["approval-test"],
         "scopes": ["payments:accounts.unfreeze"], "when": "true", "max_duration": "10m",
         "resources": "any",
         # the first requester is listed too: its own vote must still never count
         "approval": {"quorum": 1, "approvers": [requester(run_id, "a", 0), v[0]],
                      "window": "5m"}},
        {"id": "appr-quick-window", "agent_classes": ["approval-test"],
         "scopes": ["crm:customer.pii.read"], "when": "true", "max_duration": "10m",
         "resources": "any", "approval": {"quorum": 1, "approvers": [v[0]], "window": "3s"}},
        {"id": "appr-operator", "agent_classes": ["approval-test"],
         "scopes": ["payments:accounts.read"], "when": "true", "max_duration": "10m",
         "resources": "any",
         "approval": {"quorum": 2, "approvers": [operator_name(), v[0]], "window": "5m"}},
        {"id": "graduated", "agent_classes": ["graduated-test"],
         "scopes": ["payments:accounts.freeze", "crm:customer.pii.read"], "when": "true",
         "resources": "any", "tiers": [
             {"name": "confident", "when": "request.confidence >= 0.95",
              "scopes": ["payments:accounts.freeze", "crm:customer.pii.read"],
              "max_duration": "15m"},
             {"name": "unsure", "when": "request.confidence >= 0.8",
              "scopes": ["crm:customer.pii.read"], "max_duration": "5m",
              "approval": {**approval, "scopes": ["payments:accounts.freeze"]}},
         ]},
    ]
    lines = []
    agents = [(a, "reporting") for a in v]
    agents += [(requester(run_id, k, n), c) for k, c in (("a", "approval-test"),
                                                         ("g", "graduated-test"))
               for n in range(REQUESTERS)]
    for agent_id, cls in agents:
        lines += [f"  - agent_id: {agent_id}", f"    agent_class: {cls}",
                  "    owner: tests@example.com",
                  "    model: {name: test-model, version: '1.0', digest: 'sha256:00'}"]
    return lines
