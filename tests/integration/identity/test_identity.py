"""Signed events on the real worker: each way a request can be spoofed is denied and audited."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import jwt
import pytest

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import Encoded, encode
from broker.config import Settings
from broker.identity.rules import value_digest
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import (
    AgentRevoked,
    AuditRecord,
    EscalationDecided,
    EscalationRequested,
    GrantIssued,
)
from schemas.signing import SIGNATURE_HEADER
from tests.support.factories import anomaly, fraud_request
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]


def unsigned_publisher(settings: Settings) -> Publisher:
    """A producer that sends exactly what it is given (an attacker's, or a careless agent's)."""
    return Publisher(role_access(settings, topics.AGENT), source="/attacker")


def signature(message: Encoded, private: SigningKey, kid: str, *, iss: str,
              iat: datetime | None = None) -> Encoded:
    """A ce_signature made by ``private`` but naming ``kid`` (to forge one)."""
    headers = dict(message.headers)
    claims = {"iss": iss, "aud": "permbroker", "iat": int((iat or datetime.now(UTC)).timestamp()),
              "jti": secrets.token_urlsafe(12), "ce_id": headers["ce_id"].decode(),
              "ce_type": headers["ce_type"].decode(), "key": iss,
              "digest": value_digest(message.value)}
    token = jwt.encode(claims, private.private, algorithm="EdDSA",
                       headers={"kid": kid, "typ": "permbroker-event+jwt"})
    return Encoded(message.key, message.value,
                   [*message.headers, (SIGNATURE_HEADER, token.encode())])


def attack_messages(kind: str, victim: str, other: str,
                    store: AgentKeyStore) -> tuple[EscalationRequested, list[Encoded]]:
    """The request and the message(s) of one attack on ``victim``."""
    request = fraud_request(victim)
    plain = encode(request, source="/attacker")
    mine, theirs, stranger = store.load(victim).current, store.load(other).current, \
        SigningKey.generate()
    if kind == "unsigned":
        return request, [plain]
    if kind == "forged":  # names the victim's key, signed by another
        return request, [signature(plain, stranger, mine.kid, iss=victim)]
    if kind == "unknown-kid":
        return request, [signature(plain, stranger, stranger.kid, iss=victim)]
    if kind == "foreign-key":  # another registered agent's own valid signature
        return request, [sign_message(plain, theirs, other)]
    if kind == "stale":
        return request, [signature(plain, mine, mine.kid, iss=victim,
                                   iat=datetime.now(UTC) - timedelta(minutes=10))]
    signed = sign_message(plain, mine, victim)  # replay: the very same bytes, twice
    return request, [signed, signed]


@pytest.mark.parametrize("kind, rule", [
    ("unsigned", "identity:unsigned"), ("forged", "identity:forged"),
    ("unknown-kid", "identity:unknown-kid"), ("foreign-key", "identity:foreign-key"),
    ("stale", "identity:stale"), ("replay", "identity:replay"),
])
def test_spoofed_request_is_denied_and_audited_with_a_distinct_reason(
    worker: object, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str], kind: str, rule: str,
) -> None:
    """Forged, unknown kid, another agent's key, stale iat, replay, unsigned: no decision, no
    grant, an identity.rejected audit record naming the rule; a later genuine request works."""
    victim, other = agents("f"), agents("f")
    decisions, audit = tap(topics.DECISIONS.name), tap(topics.AUDIT.name)
    store = AgentKeyStore.from_settings(settings)
    request, messages = attack_messages(kind, victim, other, store)
    attacker = unsigned_publisher(settings)
    for m in messages:
        attacker.publish_raw(topics.ESCALATIONS.name, m)
    genuine = fraud_request(victim)
    publisher.publish(topics.ESCALATIONS.name, genuine)  # same partition: decided after
    decisions.wait_for(EscalationDecided, lambda d: d.request_id == genuine.request_id)
    rejected = audit.wait_for(AuditRecord, lambda a: a.kind == "identity.rejected"
                              and a.subject_id == request.request_id)
    assert [a.rules for a in rejected] == [(rule,)]
    actor = other if kind == "foreign-key" else victim  # the verified signer, when there is one
    assert rejected[0].outcome == "denied" and rejected[0].agent_id == actor
    got = decisions.events(EscalationDecided, lambda d: d.request_id == request.request_id)
    if kind == "replay":  # the first copy was genuine and decided; the copy is not
        assert len(got) == 1
    else:
        assert got == []


def test_an_unreadable_risk_signal_revokes_only_when_authentically_signed(
    worker: object, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str],
) -> None:
    """Fail closed without a DoS: garbage signed by the agent itself revokes it; the same
    garbage unsigned (anyone could send it) is dead-lettered and audited, and revokes nothing."""
    signed_agent, unsigned_agent = agents("f"), agents("f")
    grants, dlq = tap(topics.GRANTS.name), tap(topics.DEAD_LETTER.name)
    for agent in (signed_agent, unsigned_agent):
        publisher.publish(topics.ESCALATIONS.name, fraud_request(agent))
    grants.wait_for(GrantIssued, lambda g: g.agent_id in {signed_agent, unsigned_agent}, count=2)
    template = encode(anomaly(signed_agent), source="/tests")
    for agent, send in ((signed_agent, publisher), (unsigned_agent, unsigned_publisher(settings))):
        garbage = Encoded(key=agent.encode(), value=b'{"signal_id": oops',
                          headers=template.headers)
        send.publish_raw(topics.RISK.name, garbage)
    revoked = grants.wait_for(AgentRevoked, lambda e: e.agent_id == signed_agent)[0]
    assert revoked.rule == "undecodable-risk-signal"
    wait_until(lambda: len([r for r in dlq.records if r.key == unsigned_agent.encode()]) == 1,
               30, "the unsigned garbage dead-lettered")
    publisher.publish(topics.ESCALATIONS.name, fraud_request(unsigned_agent))  # a barrier
    grants.wait_for(GrantIssued, lambda g: g.agent_id == unsigned_agent, count=2)
    assert grants.events(AgentRevoked, lambda e: e.agent_id == unsigned_agent) == []
