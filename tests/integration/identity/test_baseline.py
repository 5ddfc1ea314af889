"""Baseline entitlements on real Kafka + Redis: a registered agent's baseline is allowed at a
view with no escalation, withdrawn by suspension (at the suspension's consistency token) and by
decommissioning, restored on resume; a scope outside it stays denied; forged statements change
nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import BaselineEntitlement
from tests.support.enforcement import FREEZE
from tests.support.identities import Registrar, api_settings, new_service, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
READ = "payments:transactions.read"  # the fraud-detection class's baseline


def _forge(settings: Settings, agent: str) -> None:
    """Statements the broker never made, past the ACLs: unsigned and signed by a foreign key,
    one granting a scope outside the baseline, one withdrawing it, both at a far revision."""
    key, now = SigningKey.generate(), datetime.now(UTC)
    writer = Publisher(role_access(settings, topics.ADMIN), source="/forged")
    for n, (status, scopes) in enumerate((("active", (READ, FREEZE)), ("withdrawn", ()))):
        event = BaselineEntitlement(
            entitlement_id=f"baseline-forged-{n}", agent_id=agent, status=status, scopes=scopes,
            registry_revision=1_000_000, policy_revision="forged", cause_id="forged",
            effective_at=now)
        for topic in (topics.GRANTS.name, topics.GRANTS_PAYMENTS.name):
            m = encode(event, source="/permbroker/worker/forged")
            writer.publish_raw(topic, m)
            writer.publish_raw(topic, sign_message(m, key, "permbroker"))


def test_baseline_is_allowed_withdrawn_on_suspension_and_restored_on_resume(
    worker: object, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """No escalation: the baseline scope is allowed (as a baseline entitlement, on any
    resource) at a view of the default topic and of the namespace topic; FREEZE is not.
    Suspended: denied at the suspension's token. Resumed: allowed again at its token.
    Forged statements (a wider baseline, a withdrawal) change nothing."""
    agent, service = agents("f"), role_access(settings, topics.SERVICE)
    trust = shared_trust(settings)
    with GrantView(service, trust=trust) as whole, \
            GrantView(service, trust=trust, topic=topics.GRANTS_PAYMENTS.name) as payments:
        views = (whole, payments)
        assert all(v.wait_ready(30) for v in views)
        for view in views:
            allowed = wait_until(lambda v=view: v.allows(agent, READ, "acct-9").allowed or None,
                                 30, "the registration's baseline at the view")
            verdict = view.allows(agent, READ, "acct-9")
            assert allowed and verdict.grant is None and verdict.baseline is not None
            assert verdict.reason.startswith("baseline entitlement: baseline of class "
                                             "fraud-detection"), verdict.reason
            assert not view.allows(agent, FREEZE, "acct-9").allowed
        _forge(settings, agent)
        suspended = registrar.operator.suspend(agent, reason="under investigation")
        assert suspended.consistency_token, suspended
        for view in views:
            denied = view.allows(agent, READ, "acct-9", at_least=suspended.consistency_token)
            assert not denied.allowed and not denied.unavailable, denied
            assert "withdrawn" in denied.reason and "under investigation" in denied.reason
        resumed = registrar.operator.resume(agent, reason="cleared")
        assert resumed.consistency_token, resumed
        for view in views:
            again = view.allows(agent, READ, "acct-1", at_least=resumed.consistency_token)
            assert again.allowed and again.baseline is not None, again
            assert not view.allows(agent, FREEZE, "acct-1").allowed  # the forgery was not applied


def test_check_says_the_verdict_is_a_baseline_entitlement(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """/v1/check allows the baseline scope with ``entitlement: baseline`` and no grant."""
    agent = agents("f")
    with TestClient(create_app(api_settings(settings, agent))) as api:
        wait_until(lambda: api.get("/readyz").status_code == 200, 30, "the API to be ready")
        auth = new_service(settings, "payments-baseline-check")

        def check(scope: str) -> dict[str, object]:
            body = {"agent_id": agent, "scope": scope, "resource": "acct-3"}
            answer: dict[str, object] = api.post("/v1/check", json=body, auth=auth).json()
            return answer

        allowed = wait_until(lambda: check(READ)["allowed"] and check(READ), 30, "baseline")
        assert allowed["entitlement"] == "baseline" and allowed["grant_id"] is None, allowed
        denied = check(FREEZE)
        assert not denied["allowed"] and denied["entitlement"] is None, denied
