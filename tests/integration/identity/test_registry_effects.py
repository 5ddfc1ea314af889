"""The registry on real Kafka + Redis: model changes, suspension, revoked keys act on grants."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.registry_view import read_registry
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import (
    AuditRecord,
    EscalationDecided,
    GrantIssued,
    GrantRevoked,
    ModelInfo,
)
from tests.support.factories import fraud_request
from tests.support.identities import Registrar, agent_client
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"


def ask(client: AgentClient) -> EscalationDecided:
    return client.request_escalation([FREEZE, PII], resources=["acct-1"], duration_s=600,
                                     reason="pattern", confidence=0.95, risk_score=0.9)


def test_a_new_model_version_revokes_the_agents_grants_with_the_reason(
    worker: object, settings: Settings, tap: TapFactory, agents: Callable[[str], str],
    registrar: Registrar,
) -> None:
    """The grant records model and key; an update to model 1.1 revokes it, saying why."""
    agent = agents("f")
    grants, audit = tap(topics.GRANTS.name), tap(topics.AUDIT.name)
    with agent_client(settings, agent) as client:
        first = ask(client)
        issued = grants.wait_for(GrantIssued, lambda g: g.grant_id == first.grant_id)[0]
        assert (issued.model_version, issued.model_digest) == ("1.0", "sha256:00")
        assert client.identity is not None and issued.kid == client.identity.kid
        profile = registrar.seed(agent).model_copy(
            update={"model": ModelInfo(name="test-model", version="1.1", digest="sha256:01")})
        registrar.operator.update(profile, reason="retrained on November data")
        revoked = grants.wait_for(GrantRevoked, lambda e: e.grant_id == first.grant_id)[0]
        assert revoked.rule == "revoke-on-model-change"
        assert "model changed" in revoked.reason and "1.0" in revoked.reason
        assert "1.1" in revoked.reason
        assert audit.wait_for(AuditRecord, lambda a: a.kind == "registry.updated"
                              and a.agent_id == agent)
        second = ask(client)  # the new model earns its own grant
        assert second.outcome == "granted"
        again = grants.wait_for(GrantIssued, lambda g: g.grant_id == second.grant_id)[0]
        assert again.model_version == "1.1"


def test_suspension_revokes_and_denies_until_resumed(
    worker: object, settings: Settings, tap: TapFactory, agents: Callable[[str], str],
    registrar: Registrar,
) -> None:
    """Suspended: grants revoked, requests denied (identity:agent-suspended); resumed: granted."""
    agent = agents("f")
    grants = tap(topics.GRANTS.name)
    with agent_client(settings, agent) as client:
        held = ask(client)
        registrar.operator.suspend(agent, reason="under investigation")
        revoked = grants.wait_for(GrantRevoked, lambda e: e.grant_id == held.grant_id)[0]
        assert revoked.rule == "registry:suspended" and "under investigation" in revoked.reason
        denied = ask(client)
        assert denied.outcome == "denied"
        assert {d.rule for d in denied.denied} == {"identity:agent-suspended"}
        registrar.operator.resume(agent, reason="cleared")
        assert ask(client).outcome == "granted"


def test_a_revoked_key_revokes_grants_quarantines_and_signs_nothing_more(
    worker: object, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """Operator revokes a compromised key: its grants go, the agent is quarantined, and any
    event signed with it is rejected as identity:key-revoked."""
    agent = agents("f")
    grants, audit = tap(topics.GRANTS.name), tap(topics.AUDIT.name)
    key = registrar.store.load(agent).current
    with agent_client(settings, agent) as client:
        held = ask(client)
    registrar.operator.revoke_key(agent, key.kid, reason="key found in a public repo")
    revoked = grants.wait_for(GrantRevoked, lambda e: e.grant_id == held.grant_id)[0]
    assert revoked.rule == "registry:key-revoked"
    record = read_registry(role_access(settings, topics.OPERATOR)).get(agent)
    assert record is not None and record.status == "quarantined"
    stolen = fraud_request(agent)
    Publisher(role_access(settings, topics.AGENT), source="/thief").publish_raw(
        topics.ESCALATIONS.name, sign_message(encode(stolen, source="/thief"), key, agent))
    rejected = audit.wait_for(AuditRecord, lambda a: a.subject_id == stolen.request_id)[0]
    assert rejected.rules == ("identity:key-revoked",)
