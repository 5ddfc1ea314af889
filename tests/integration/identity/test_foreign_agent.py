"""An agent in "another language": raw confluent-kafka + joserfc, following docs/protocol.md only.

This module imports nothing from schemas/, broker/ or streams/. The operator's part (an
enrollment token) is the `permbroker` CLI run as a subprocess, as an operator would run it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from joserfc import jwe, jwk, jwt
from joserfc.errors import JoseError
from joserfc.jwt import JWTClaimsRegistry

pytestmark = pytest.mark.integration


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class ForeignAgent:
    """What docs/protocol.md asks of an agent, written against Kafka and JOSE directly."""

    def __init__(self, connect: dict[str, str], agent_id: str) -> None:
        self.agent_id = agent_id
        self.key = jwk.OKPKey.generate_key("Ed25519")  # the private key never leaves here
        self.producer = Producer({**connect, "acks": "all", "partitioner": "murmur2_random"})
        self.consumer = Consumer({**connect, "enable.auto.commit": False,
                                  "group.id": f"pb-agent-foreign-{uuid.uuid4()}"})

    def decision_topic(self) -> str:
        """The protocol's rule: the default tenant's own decision topic when the broker has
        one (tenants are declared), else ``permbroker.decisions``."""
        own = "permbroker.tenant.default.decisions"
        return own if own in self.consumer.list_topics(timeout=10).topics \
            else "permbroker.decisions"

    def listen(self, topic: str) -> None:
        """Start reading a topic at its current end on every partition (before sending)."""
        parts = self.consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = [TopicPartition(topic, p, self.consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=10)[1]) for p in parts]
        self.consumer.assign(ends)

    def send(self, topic: str, ce_type: str, ce_id: str, event: dict[str, Any]) -> None:
        """Section 1 + 3: serialize once, sign those bytes, produce them."""
        value = json.dumps(event).encode()
        claims = {"iss": self.agent_id, "aud": "permbroker", "iat": int(time.time()),
                  "jti": b64url(secrets.token_bytes(16)), "ce_id": ce_id, "ce_type": ce_type,
                  "key": self.agent_id, "digest": b64url(hashlib.sha256(value).digest())}
        signature = jwt.encode({"alg": "EdDSA", "kid": self.key.thumbprint(),
                                "typ": "permbroker-event+jwt"}, claims, self.key,
                               algorithms=["EdDSA"])
        headers = {"ce_specversion": "1.0", "ce_id": ce_id, "ce_type": ce_type,
                   "ce_source": f"/agents/{self.agent_id}", "ce_subject": self.agent_id,
                   "ce_time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "content-type": "application/json", "ce_signature": signature}
        self.producer.produce(topic, value=value, key=self.agent_id.encode(),
                              headers=list(headers.items()))
        assert self.producer.flush(10) == 0

    def wait(self, ce_type: str, field: str, value: str, timeout: float = 30) -> dict[str, Any]:
        """The first event of ``ce_type`` whose ``field`` equals ``value``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            headers = {k: v.decode() for k, v in msg.headers() or []}
            if headers.get("ce_type") == ce_type:
                event = json.loads(msg.value())
                if event.get(field) == value:
                    return dict(event)
        raise AssertionError(f"no {ce_type} with {field}={value} within {timeout}s")

    def close(self) -> None:
        self.consumer.close()


def connection(settings: Any, user: str) -> dict[str, str]:
    """Section 1: the bootstrap servers, and the SASL/SCRAM user of its role when Kafka has
    users (the operator hands the password out; here, the test stack's credentials file)."""
    connect = {"bootstrap.servers": settings.kafka_bootstrap}
    users = settings.kafka_credentials_file
    if users is not None and os.path.exists(users):
        with open(users) as f:
            password = json.load(f)[user]
        connect.update({"security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "SCRAM-SHA-512",
                        "sasl.username": user, "sasl.password": password})
    return connect


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enrollment_token(settings: Any, agent_id: str) -> str:
    """The operator's step: `permbroker agents enroll ... --json`."""
    operator = connection(settings, "operator")
    env = {**os.environ, "PERMBROKER_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "PERMBROKER_KAFKA_USERNAME": operator.get("sasl.username", ""),
           "PERMBROKER_KAFKA_PASSWORD": operator.get("sasl.password", ""),
           "PERMBROKER_STACK_DIR": str(settings.stack_dir),
           "PERMBROKER_POLICY_PATH": str(settings.policy_path)}
    out = subprocess.run(
        [sys.executable, "-m", "broker", "agents", "enroll", "--agent", agent_id,
         "--class", "fraud-detection", "--owner", "fraud-ops@example.com",
         "--model", "go-fraud:2.0@sha256:beef", "--threshold", "0.9", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=True)
    return str(json.loads(out.stdout)["enrollment_token"])


# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" alg name (for "Ed25519"); the
# documented protocol, pyjwt and the broker sign with "EdDSA", which is what this interop checks.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_an_agent_using_only_the_documented_protocol_gets_an_escalation_granted(
    worker: object, settings: Any,
) -> None:
    """Register with an enrollment token, escalate, read the decision, get and check a token."""
    agent = ForeignAgent(connection(settings, "agent"), f"foreign-{uuid.uuid4().hex[:8]}")
    try:
        token = enrollment_token(settings, agent.agent_id)
        agent.listen(agent.decision_topic())
        register_id = f"register-{uuid.uuid4()}"
        agent.send("permbroker.registry", "io.permbroker.agent.command.v1", register_id, {
            "command_id": register_id, "action": "register", "agent_id": agent.agent_id,
            "key": agent.key.as_dict(private=False), "enrollment": token, "issued_at": now()})
        answer = agent.wait("io.permbroker.command.answered.v1", "command_id", register_id)
        assert answer["outcome"] == "done", answer

        request_id = f"req-{uuid.uuid4()}"
        agent.send("permbroker.escalations", "io.permbroker.escalation.requested.v1", request_id, {
            "request_id": request_id, "agent_id": agent.agent_id,
            "scopes": ["payments:accounts.freeze"], "resources": ["acct-4411-0923"],
            "duration_s": 900, "reason": "card-testing ring", "confidence": 0.95,
            "risk_score": 0.93, "requested_at": now()})
        decision = agent.wait("io.permbroker.escalation.decided.v1", "request_id", request_id)
        assert decision["outcome"] == "granted", decision
        assert decision["granted_scopes"] == ["payments:accounts.freeze"]

        reply = jwk.OKPKey.generate_key("X25519")
        command_id = f"token-{uuid.uuid4()}"
        agent.send("permbroker.grant-commands", "io.permbroker.grant.command.v1", command_id, {
            "command_id": command_id, "agent_id": agent.agent_id,
            "grant_id": decision["grant_id"], "action": "token", "audience": "payments",
            "reply_key": reply.as_dict(private=False), "issued_at": now()})
        sealed = agent.wait("io.permbroker.command.answered.v1", "command_id", command_id)
        assert sealed["outcome"] == "done", sealed
        grant_token = jwe.decrypt_compact(sealed["token"], reply,
                                          algorithms=["ECDH-ES", "A256GCM"]).plaintext
        with open(settings.key_path("trust-anchor")) as f:  # the operator hands it out
            keys = jwks(connection(settings, "service"), json.load(f))
        checked = jwt.decode(grant_token, jwk.KeySet.import_key_set(keys), algorithms=["EdDSA"])
        JWTClaimsRegistry(iss={"essential": True, "value": "permbroker"},
                          aud={"essential": True, "value": "payments"},
                          sub={"essential": True, "value": agent.agent_id},
                          jti={"essential": True, "value": decision["grant_id"]},
                          ).validate(checked.claims)
        assert checked.header["typ"] == "permbroker-grant+jwt"
        assert checked.claims["exp"] - checked.claims["iat"] <= 60
    finally:
        agent.close()


def jwks(connect: dict[str, str], anchor: dict[str, Any]) -> dict[str, Any]:
    """Sections 7 and 11: the key set in force, following the chain of trust from the pinned
    ``anchor`` through the JWKS topic (a set counts only when signed by a key of the set in
    force, for the same issuer, not older than it; anything else on the topic changes nothing)."""
    c = Consumer({**connect, "group.id": f"pb-service-jwks-{uuid.uuid4()}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    in_force, since = anchor["keys"], ""
    try:
        _low, high = c.get_watermark_offsets(TopicPartition("permbroker.jwks", 0), timeout=10)
        c.assign([TopicPartition("permbroker.jwks", 0, 0)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            value, issuer = json.loads(msg.value()), anchor["issuer"]
            if signed_by(msg, in_force, issuer) and value.get("issuer") == issuer \
                    and value["published_at"] >= since:
                in_force, since = value["keys"], value["published_at"]
            if msg.offset() + 1 >= high:
                return {"keys": [{k: v for k, v in key.items() if v is not None}
                                 for key in in_force]}
        raise AssertionError("the JWKS topic could not be read to its end")
    finally:
        c.close()


def signed_by(msg: Any, keys: list[dict[str, Any]], issuer: str) -> bool:
    """Section 11: the record's ce_signature verifies with one of ``keys``, by ``issuer``, and
    binds its exact value bytes, ce_id, ce_type and Kafka key, for audience permbroker."""
    headers = {k: v.decode() for k, v in msg.headers() or []}
    key_set = jwk.KeySet.import_key_set({"keys": [
        {k: v for k, v in key.items() if v is not None} for key in keys]})
    try:
        claims = jwt.decode(headers.get("ce_signature", ""), key_set,
                            algorithms=["EdDSA", "ES256"]).claims
    except JoseError:  # malformed, unknown kid, bad signature
        return False
    return (claims.get("iss") == issuer and claims.get("aud") == "permbroker"
            and claims.get("digest") == b64url(hashlib.sha256(msg.value()).digest())
            and claims.get("ce_id") == headers.get("ce_id")
            and claims.get("ce_type") == headers.get("ce_type")
            and claims.get("key") == (msg.key() or b"").decode())


def test_this_module_uses_none_of_the_projects_code() -> None:
    """The foreign agent is honest: no import from schemas, broker, streams or tests."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(__file__).read_text("utf-8"))
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m.split(".")[0] for m in modules} & {"schemas", "broker", "streams", "tests"}
