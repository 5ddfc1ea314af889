"""Identities through the HTTP API on real Kafka and Redis: agents keep every identity check,
operators are named by the key that signed, unknown agents leave no Redis state."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import Encoded
from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided
from schemas.signing import ASSERTION_HEADER
from tests.support.factories import fraud_request
from tests.support.identities import (
    Assertions,
    Registrar,
    agent_auth,
    agent_client,
    api_settings,
    new_operator,
    operator_auth,
)
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE = "payments:accounts.freeze"
ASK = {"scopes": [FREEZE], "resources": ["acct-1"], "duration_s": 600, "reason": "pattern",
       "confidence": 0.95, "risk_score": 0.9}


@pytest.fixture
def api(worker: object, settings: Settings) -> Iterator[TestClient]:
    """The HTTP API on the suite's stack."""
    with TestClient(create_app(api_settings(settings, "identities"))) as client:
        yield client


def over_http(api: TestClient, agent: str, auth: Assertions) -> dict[str, object]:
    answer = api.post(f"/v1/agents/{agent}/escalations", json=ASK, auth=auth)
    assert answer.status_code == 200, answer.text
    decided: dict[str, object] = answer.json()
    return decided


def over_kafka(client: AgentClient) -> EscalationDecided:
    return client.request_escalation([FREEZE], resources=["acct-1"], duration_s=600,
                                     reason="pattern", confidence=0.95, risk_score=0.9)


def rules_of(decision: dict[str, object]) -> set[str]:
    denied = decision["denied"]
    assert isinstance(denied, list)
    return {d["rule"] for d in denied}


def test_a_suspended_agent_is_refused_through_http_as_over_kafka(
    api: TestClient, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """Suspended: denied with identity:agent-suspended through the API and over Kafka alike."""
    agent = agents("f")
    assert over_http(api, agent, agent_auth(settings, agent))["outcome"] == "granted"
    registrar.operator.suspend(agent, reason="under investigation")
    through_api = over_http(api, agent, agent_auth(settings, agent))
    assert through_api["outcome"] == "denied"
    assert rules_of(through_api) == {"identity:agent-suspended"}
    with agent_client(settings, agent) as client:
        direct = over_kafka(client)
    assert direct.outcome == "denied"
    assert {d.rule for d in direct.denied} == {"identity:agent-suspended"}


def test_a_quarantined_agent_is_refused_through_http_as_over_kafka(
    api: TestClient, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """Quarantined (its old key revoked; its new key still valid): denied with
    identity:agent-quarantined through the API and over Kafka alike."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        old = registrar.store.load(agent).current.kid
        client.rotate_key(overlap_s=300)
        registrar.operator.revoke_key(agent, old, reason="old key leaked")
        through_api = over_http(api, agent, agent_auth(settings, agent))  # the new key
        assert through_api["outcome"] == "denied"
        assert rules_of(through_api) == {"identity:agent-quarantined"}
        direct = over_kafka(client)
    assert direct.outcome == "denied"
    assert {d.rule for d in direct.denied} == {"identity:agent-quarantined"}


def test_a_revoked_key_is_refused_by_the_api_and_by_the_worker_behind_it(
    api: TestClient, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
    tap: TapFactory,
) -> None:
    """The API answers 401 identity:key-revoked to an assertion signed with a revoked key; a
    relayed record carrying such an assertion (as a relay with a stale registry would send it)
    is rejected by the worker's gate with the same rule, as over Kafka."""
    agent = agents("f")
    audit = tap(topics.AUDIT.name)
    stolen = agent_auth(settings, agent)
    registrar.operator.revoke_key(agent, stolen.key.kid, reason="key found in a public repo")
    api.app.state.runtime.registry.sync(10)  # type: ignore[attr-defined]
    refused = api.post(f"/v1/agents/{agent}/escalations", json=ASK, auth=stolen)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:permbroker:problem:identity:key-revoked"
    relayed = fraud_request(agent)
    assertion = stolen.header_value("POST", f"/v1/agents/{agent}/escalations")
    api_key = api.app.state.runtime.identity  # type: ignore[attr-defined]

    def relay(message: Encoded) -> Encoded:
        return api_key.sign(Encoded(message.key, message.value,
                                    [*message.headers, (ASSERTION_HEADER, assertion.encode())]))

    Publisher(role_access(settings, topics.API), source="/stale-relay", signer=relay).publish(
        topics.ESCALATIONS.name, relayed)
    rejected = audit.wait_for(AuditRecord, lambda a: a.subject_id == relayed.request_id)[0]
    assert rejected.kind == "identity.rejected" and rejected.rules == ("identity:key-revoked",)
    with agent_client(settings, agent) as client:  # over Kafka: refused alike
        direct = fraud_request(agent)
        client.send(direct)
    over = audit.wait_for(AuditRecord, lambda a: a.subject_id == direct.request_id)[0]
    assert over.rules == ("identity:key-revoked",)


def test_a_service_signed_record_without_an_assertion_acts_for_no_one(
    worker: object, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """The API's service key alone cannot ask for an agent's grants: the gate refuses it."""
    agent = agents("f")
    audit = tap(topics.AUDIT.name)
    service = ensure_service(settings, "bare-relay")
    bare = fraud_request(agent)
    Publisher(role_access(settings, topics.API), source="/bare",
              signer=service.sign).publish(topics.ESCALATIONS.name, bare)
    rejected = audit.wait_for(AuditRecord, lambda a: a.subject_id == bare.request_id)[0]
    assert rejected.rules == ("identity:not-permitted",)


def test_the_audit_names_the_operator_whose_key_signed_not_a_header(
    api: TestClient, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """Two operators revoke through the API: each audit record names the operator whose
    assertion was relayed; an X-Permbroker-Operator header naming someone else changes
    nothing."""
    audit = tap(topics.AUDIT.name)
    alice = operator_auth(settings)
    bob = new_operator(settings, f"bob-{uuid.uuid4().hex[:6]}")
    named = {}
    for who, agent in ((alice, agents("f")), (bob, agents("f"))):
        revoked = api.post(f"/v1/operator/agents/{agent}/revoke", json={"reason": "audit test"},
                           headers={"X-Permbroker-Operator": "operator:mallory"}, auth=who)
        assert revoked.status_code == 200, revoked.text
        signal = revoked.json()["signal_id"]
        record = audit.wait_for(AuditRecord, lambda a, s=signal: a.subject_id == s)[0]
        named[who.principal] = record
    for principal, record in named.items():
        assert record.inputs["signed_by"] == principal
        assert record.reasons[0].startswith(f"revoked by {principal}:")
        assert "mallory" not in str(record.model_dump())
    assert len({r.inputs["signed_by"] for r in named.values()}) == 2


def test_a_request_for_an_unknown_agent_writes_no_redis_key(
    api: TestClient, worker: object, settings: Settings, publisher: Publisher,
    tap: TapFactory, rclient: redis.Redis,
) -> None:
    """Unsigned over Kafka or unauthenticated over HTTP, a request in the name of an agent the
    registry does not know is denied (or refused) and leaves no key under that id in Redis."""
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    decisions = tap(topics.DECISIONS.name)
    unsigned = fraud_request(stranger)
    Publisher(role_access(settings, topics.AGENT), source="/anyone").publish(
        topics.ESCALATIONS.name, unsigned)
    denied = decisions.wait_for(EscalationDecided,
                                lambda d: d.request_id == unsigned.request_id)[0]
    assert denied.outcome == "denied"
    assert api.post(f"/v1/agents/{stranger}/escalations", json=ASK).status_code == 401
    forged = api.post(f"/v1/agents/{stranger}/escalations", json=ASK,
                      headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401
    assert [k for k in rclient.scan_iter(match=f"*{stranger}*", count=1000)] == []
    assert rclient.hget("pb:agents:last-acted", stranger) is None
