"""Records the broker did not sign, written past the ACLs, change nothing for any reader.

On real Kafka and Redis, a writer with the admin user (ACLs bypassed on purpose) puts on the
topics what the broker would write: a grant (unsigned, and signed by a key of its own), key sets
(unsigned, and signed by its own key with published_at in 2099), a registry record re-keying a
legitimate agent, a decision, and enforcement-point acks. Every reader refuses each one and
counts it with its origin: the resource view, the API (its view, /v1/check, its ack follower,
its metrics and readiness), the token verifier's JWKS, the registry read, a rebuild, the
revocation status and a decision watcher; the legitimate agent is served all along.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.testclient import TestClient

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka import rebuild
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import Encoded, encode
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.api.app import create_app
from broker.cli.ops.enforcement import collect_status
from broker.config import Settings
from broker.errors import DecisionTimeout, TokenRejected
from broker.sdk.agent.client import DecisionWatcher
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import (
    AgentKey,
    EnforcementPointStatus,
    EscalationDecided,
    GrantIssued,
    JwksPublished,
    RevocationAcknowledged,
    WireModel,
)
from schemas.signing import GRANT_TOKEN_TYPE
from tests.support.enforcement import FREEZE
from tests.support.identities import (
    agent_client,
    api_settings,
    new_service,
    operator_auth,
    service_topic,
    shared_trust,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
CLOSE = "payments:accounts.close"  # a scope the agent was never granted


@dataclass
class Attacker:
    """A writer past the ACLs (the admin user) with a key of its own, claiming the broker's."""

    settings: Settings
    key: SigningKey

    def publish(self, topic: str, event: WireModel, *, signer: str | None = "permbroker",
                signed: bool = True) -> None:
        """The event on ``topic``, signed by the attacker's key as ``signer`` (or unsigned)."""
        m = encode(event, source="/permbroker/worker/forged")
        if signed and signer is not None:
            m = sign_message(m, self.key, signer)
        self.raw(topic, m)

    def both(self, topic: str, event: WireModel, signer: str = "permbroker") -> None:
        """Unsigned, and signed by the attacker's own key."""
        self.publish(topic, event, signed=False)
        self.publish(topic, event, signer=signer)

    def raw(self, topic: str, m: Encoded) -> None:
        Publisher(role_access(self.settings, topics.ADMIN), source="/forged").publish_raw(topic, m)


def _forge(attacker: Attacker, agent: str, point: str, *read: str) -> dict[str, str]:
    """Every forgery (grants also on ``read``: the grant topics the readers read); returns the
    ids the readers must not show."""
    now = datetime.now(UTC)
    grant = GrantIssued(grant_id=f"g-forged-{uuid.uuid4().hex[:8]}", agent_id=agent,
                        request_id="req-forged", scopes=(CLOSE,), resources=("acct-1",),
                        issued_at=now, expires_at=now + timedelta(hours=1),
                        policy_revision="forged", rules=("forged",))
    for topic in {topics.GRANTS.name, topics.GRANTS_PAYMENTS.name, *read}:
        attacker.both(topic, grant)
    evil_set = JwksPublished(issuer="permbroker", keys=(attacker.key.jwk,), revision="forged",
                             published_at=datetime(2099, 1, 1, tzinfo=UTC))
    attacker.both(topics.JWKS.name, evil_set)
    real = read_registry(role_access(attacker.settings, topics.OPERATOR),
                         shared_trust(attacker.settings)).get(agent)
    assert real is not None
    rekeyed = real.model_copy(update={"revision": real.revision + 100, "keys": (AgentKey(
        kid=attacker.key.kid, jwk=attacker.key.jwk, added_at=now),)})
    attacker.both(topics.AGENTS.name, rekeyed)
    # Accepted, an ack or status report would list its point in every revocation status.
    ack = RevocationAcknowledged(
        ack_id=f"ack-forged-{uuid.uuid4().hex[:8]}", enforcement_point=point, agent_id=agent,
        cause_event_id="sig-forged", revoked_at=now, applied_at=now, topic=topics.GRANTS.name,
        partition=0, offset=0)
    attacker.both(topics.REVOCATION_ACKS.name, ack, signer=f"service:{point}")
    status = EnforcementPointStatus(enforcement_point=point, topic=topics.GRANTS.name,
                                    ready=True, started_at=now, reported_at=now)
    attacker.both(topics.REVOCATION_ACKS.name, status, signer=f"service:{point}")
    return {"grant": grant.grant_id, "kid": attacker.key.kid, "point": point}


def _evil_token(key: SigningKey, agent: str, grant_id: str) -> str:
    now = int(datetime.now(UTC).timestamp())
    claims = {"iss": "permbroker", "aud": "payments", "sub": agent, "scope": CLOSE, "jti": "x",
              "iat": now, "nbf": now, "exp": now + 30, "grant_id": grant_id, "resources": []}
    return jwt.encode(claims, key.private, algorithm="EdDSA",
                      headers={"kid": key.kid, "typ": GRANT_TOKEN_TYPE})


def test_forged_grants_keys_registry_records_and_acks_are_refused_by_every_reader(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """Unsigned or foreign-signed: never applied, each refusal counted with its origin; the
    legitimate agent is still granted, checked, and its token verified."""
    agent, service = agents("f"), role_access(settings, topics.SERVICE)
    attacker = Attacker(settings, SigningKey.generate())
    since = datetime.now(UTC) - timedelta(seconds=5)
    keys = JwksView.from_settings(settings, service)  # a fresh reader: its own refusal counts
    watcher = DecisionWatcher(role_access(settings, topics.AGENT), trust=keys.trust)
    # The grant topic a plain service's view reads (the default tenant's own, tenants declared).
    payments = service_topic(settings, topics.GRANTS_PAYMENTS.name)
    assert payments == topics.tenant_grants(topics.DEFAULT_TENANT, "payments").name
    try:
        forged = _forge(attacker, agent, f"forged-{uuid.uuid4().hex[:8]}", payments)
        attacker.both(watcher.topic, EscalationDecided(
            decision_id="d-forged", request_id="req-forged", agent_id=agent, outcome="granted",
            granted_scopes=(CLOSE,), decided_at=datetime.now(UTC), policy_revision="forged"))
        with pytest.raises(DecisionTimeout):
            watcher.wait("req-forged", timeout=3)
        with GrantView(service, trust=keys.trust, topic=topics.GRANTS_PAYMENTS.name) as view, \
                TestClient(create_app(api_settings(settings, agent))) as api:
            assert view.topic == payments
            assert view.wait_ready(30) and keys.sync(10)
            _the_view_and_the_api_refuse(settings, view, api, agent, forged)
            _the_legitimate_agent_is_served(settings, view, keys, agent, attacker, forged)
        _the_cli_readers_refuse(settings, keys, agent, forged, since)
        _each_refusal_is_counted_with_its_origin(keys, forged, watcher.topic, payments)
    finally:
        watcher.close()
        keys.close()


def _the_view_and_the_api_refuse(settings: Settings, view: GrantView, api: TestClient,
                                 agent: str, forged: dict[str, str]) -> None:
    assert not view.allows(agent, CLOSE, "acct-1").allowed
    assert view.grant_state(agent, forged["grant"]) == "unknown"
    wait_until(lambda: api.get("/readyz").status_code == 200, 30, "the API to be ready")
    check = api.post("/v1/check", json={"agent_id": agent, "scope": CLOSE, "resource": "acct-1"},
                     auth=new_service(settings, "payments-check")).json()
    assert not check["allowed"], check
    served = api.get("/.well-known/jwks.json").json()["keys"]
    assert forged["kid"] not in {k["kid"] for k in served}
    # The API's ack follower reads on its own thread: once it counted the forged acks as
    # refused, it has read past them, and the status must not list their point.
    acks = 'consumer="acks",reason="unknown-kid",topic="permbroker.revocation-acks"'
    wait_until(lambda: acks in api.get("/metrics").text, 30, "the forged acks refused")
    status = api.get("/v1/operator/revocations", auth=operator_auth(settings)).json()
    assert forged["point"] not in {p["name"] for p in status["enforcement_points"]}
    ready = api.get("/readyz").json()["refused_records"]
    assert ready["total"] >= 4 and all("/" in r["origin"] for r in ready["recent"])
    metrics = api.get("/metrics").text
    assert 'permbroker_records_refused_total{consumer="grant-view",reason="unsigned"' in metrics


def _the_legitimate_agent_is_served(settings: Settings, view: GrantView, keys: JwksView,
                                    agent: str, attacker: Attacker,
                                    forged: dict[str, str]) -> None:
    """Signed with its real key after the forged re-keying: still granted, checked, verified."""
    with agent_client(settings, agent) as client:
        d = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=900,
                                      reason="fraud ring", confidence=0.95, risk_score=0.93)
        assert d.outcome == "granted" and d.grant_id, d.reasons
        assert view.allows(agent, FREEZE, "acct-1", at_least=d.consistency_token).allowed
        token = client.grant_token(d.grant_id, "payments")
    verifier = GrantTokenVerifier(keys, audience="payments", grants=view)
    assert verifier.verify(token.token).grant_id == d.grant_id
    with pytest.raises(TokenRejected, match="unknown-kid"):
        verifier.verify(_evil_token(attacker.key, agent, forged["grant"]))


def _the_cli_readers_refuse(settings: Settings, keys: JwksView, agent: str,
                            forged: dict[str, str], since: datetime) -> None:
    operator = role_access(settings, topics.OPERATOR)
    record = read_registry(operator, keys.trust).get(agent)
    assert record is not None and forged["kid"] not in {k.kid for k in record.keys}
    folded = rebuild.collect(operator, datetime.now(UTC), keys.trust)
    assert forged["grant"] not in folded.issued
    points = {p.name for p in collect_status(operator, since, keys.trust).points}
    assert forged["point"] not in points


def _each_refusal_is_counted_with_its_origin(keys: JwksView, forged: dict[str, str],
                                             decisions: str, payments: str) -> None:
    counts = keys.trust.refusals.counts()
    expected = {
        ("jwks", topics.JWKS.name): {"unsigned", "unknown-kid"},
        ("decision-watcher", decisions): {"unsigned", "unknown-kid"},
        ("grant-view", payments): {"unsigned", "unknown-kid"},
        ("registry-read", topics.AGENTS.name): {"unsigned", "unknown-kid"},
        ("rebuild", topics.GRANTS.name): {"unsigned", "unknown-kid"},
        ("revocation-status", topics.REVOCATION_ACKS.name): {"unsigned", "unknown-kid"},
    }
    for (reader, topic), reasons in expected.items():
        seen = {r for (c, t, r), n in counts.items() if c == reader and t == topic and n}
        assert reasons <= seen, (reader, topic, seen)
    origins = [r.origin for r in keys.trust.refusals.recent()]
    assert all(o.count("/") == 2 for o in origins)
    assert keys.current() is not None and forged["kid"] not in {
        k.kid for k in keys.trust.in_force()}
