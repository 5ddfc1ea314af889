"""Default grant routing: every namespace of the policy's ceilings, unless configured."""

from __future__ import annotations

from pathlib import Path

from broker.delivery.routing import ceiling_namespaces, routing_for
from broker.policy import load_policy

REPO = Path(__file__).resolve().parents[3]



def test_every_ceiling_namespace_is_routed_when_nothing_is_configured() -> None:
    """The shipped fraud bundle's ceilings name payments, crm and reports: all three routed."""
    policy = load_policy(REPO / "policies" / "fraud")
    ceilings = [s for c in policy.classes.values() for s in c.ceiling]
    routing = routing_for((), ceilings)
    assert routing.namespaces == {"payments", "crm", "reports"}
    assert routing.routed_topic("payments") == "permbroker.grants.payments"


def test_a_configured_list_replaces_the_default() -> None:
    """Configured namespaces are exactly those routed (fewer, or others than the ceilings)."""
    ceilings = ["payments:accounts.*", "crm:customer.pii.read"]
    assert routing_for(("payments",), ceilings).namespaces == {"payments"}
    assert routing_for(("payments", "ledger"), ceilings).namespaces == {"payments", "ledger"}


def test_a_wildcard_namespace_names_no_topic() -> None:
    """``*:read`` cannot name a topic; the other namespaces still get theirs."""
    assert ceiling_namespaces(["*:read", "payments:accounts.freeze"]) == {"payments"}
