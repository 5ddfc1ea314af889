"""Operators revoke one grant (``grants revoke``) or an agent (``agents revoke``), and a view of
a namespace topic no worker routes says so instead of reporting ready."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.kafka.admin import ensure_topics
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from tests.support.audit import cli
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import agent_client, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration



def test_grants_revoke_ends_one_grant_by_prefix_and_says_what_it_revoked(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """One grant of two ends (grant.revoked naming the operator reaches a view); the other
    stays; the answer prints the revocation; a second revocation of it is refused."""
    agent = agents("f")
    service = role_access(settings, topics.SERVICE)
    with GrantView(service, trust=shared_trust(settings)) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        first, second = fraud_grant(client), fraud_grant(client, (FREEZE,))
        assert first.grant_id and second.grant_id
        done = cli(settings, "grants", "revoke", first.grant_id[:-4], "--reason", "leaked",
                   "--json")
        assert done.returncode == 0, done.output
        shown = json.loads(done.stdout)
        assert shown["grant_id"] == first.grant_id and shown["agent_id"] == agent
        assert shown["reason"].startswith("revoked by operator:") and "leaked" in shown["reason"]
        assert shown["rule"] == "operator-revoke" and shown["revoked_at"].endswith("+00:00")
        wait_until(lambda: view.grant_state(agent, first.grant_id) == "ended", 30,
                   "the grant.revoked at the view")
        assert view.grant_state(agent, second.grant_id) == "active"
    again = cli(settings, "grants", "revoke", first.grant_id, "--reason", "again")
    assert again.returncode == 1 and "no active grant" in again.stderr
    text = cli(settings, "grants", "revoke", second.grant_id, "--reason", "done")
    assert text.returncode == 0 and f"revoked grant {second.grant_id} of {agent}" in text.stdout


def test_agents_revoke_waits_for_the_worker_and_reports_each_acknowledging_point(
    worker: object, settings: Settings, agents: Callable[[str], str], run_id: str,
) -> None:
    """Every grant of the agent is revoked; the enforcement point that applied it is listed
    with its propagation time; ``--json`` carries the same."""
    agent, point = agents("f"), f"payments-{run_id}-agents-revoke"
    service = role_access(settings, topics.SERVICE)
    with GrantView(service, trust=shared_trust(settings), topic=topics.GRANTS_PAYMENTS.name,
                   enforcement_point=ensure_service(settings, point)) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        granted = fraud_grant(client, (FREEZE,))
        done = cli(settings, "agents", "revoke", agent, "--reason", "compromised",
                   "--acks-wait", "20", "--json")
    assert done.returncode == 0, done.output
    result = json.loads(done.stdout)
    assert [r["grant_id"] for r in result["revoked"]] == [granted.grant_id]
    assert result["revoked"][0]["scopes"] == [FREEZE]
    acked = [a for a in result["acknowledged"] if a["enforcement_point"] == point]
    assert len(acked) == 1 and acked[0]["propagation_ms"] >= 0, result


def test_agents_revoke_without_enforcement_points_says_none_acknowledged(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """With no point acknowledging within the bound, the output says so (and still exits 0)."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        granted = fraud_grant(client)
    done = cli(settings, "agents", "revoke", agent, "--reason", "compromised",
               "--acks-wait", "0.2")
    assert done.returncode == 0, done.output
    assert granted.grant_id in done.stdout and f"revoked 1 grant(s) of {agent}" in done.stdout


def test_a_view_of_an_unrouted_namespace_is_not_ready_and_says_why(
    worker: object, settings: Settings, run_id: str,
) -> None:
    """A namespace topic no worker routes: not ready, denying with the reason; the routed
    payments topic (announced by the worker): ready."""
    ns = f"unrouted-{run_id}"[:60].replace(".", "-")
    # The topic exists (the default tenant's own, which the plain service user reads).
    ensure_topics(role_access(settings, topics.ADMIN), [topics.grant_topic(ns),
                                                        topics.tenant_grants("default", ns)])
    service = role_access(settings, topics.SERVICE)
    with GrantView(service, trust=shared_trust(settings),
                   topic=topics.grant_topic(ns).name) as view:
        assert view.wait_ready(30)
        reason = f"no worker routes namespace '{ns}' to {view.topic}"
        state = view.freshness()
        assert not state.ready and not state.fresh and reason in state.reason(), state
        verdict = view.allows("anyone", f"{ns}:things.read")
        assert not verdict.allowed and verdict.unavailable and reason in verdict.reason
    with GrantView(service, trust=shared_trust(settings),
                   topic=topics.GRANTS_PAYMENTS.name) as routed:
        assert routed.wait_ready(30)
        wait_until(lambda: routed.freshness().fresh, 30, "the routed view fresh")
        assert routed.routing is not None and "payments" in routed.routing.namespaces
