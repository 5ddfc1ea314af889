"""The identity steps of the demo: real keys, registration, an impostor, grant tokens. L3.

Imports broker (adapters, sdk, config) and schemas. Called by ``broker.demo``: every agent has
its own key (in the demo stack's key store), the operator registers them from the policy
bundle's Agents documents (a seed of profiles), every event is signed, and the resource side
verifies a grant token against the JWKS published on Kafka.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import TopicPartition

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher, consumer, end_offsets, to_record
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.errors import BrokerError, TokenRejected
from broker.policy import load_policy
from broker.sdk.agent.client import AgentClient, GrantToken
from broker.sdk.operator.client import OperatorClient
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AuditRecord, EscalationRequested


class Timeline(Protocol):
    """What the demo's Scenario offers: a timeline line and a checked expectation."""

    def say(self, actor: str, text: str) -> None:
        """One timeline line."""

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """Record whether an expectation held."""


def register_agents(s: Timeline, settings: Settings, agent_ids: tuple[str, ...]) -> None:
    """Each agent's own key (kept in its key store); the operator registers the public halves."""
    store = AgentKeyStore.from_settings(settings)
    seed = load_policy(settings.policy_path)
    with OperatorClient(settings, role_access(settings, topics.OPERATOR)) as op:
        for agent in agent_ids:
            keys = store.load(agent) if store.exists(agent) else store.generate(agent)
            profile = seed.agent(agent)
            if profile is None:
                raise BrokerError(f"{agent} is not in the bundle's Agents documents")
            op.register(profile, keys.current.jwk, reason="demo")
            m = profile.model
            s.say(op.principal, f"registered {agent} (model {m.name} {m.version}, owner "
                  f"{profile.owner}) with its own key {keys.current.kid[:12]}…")
    s.check("agents registered in the Kafka registry with their own keys", True)


def impostor(s: Timeline, settings: Settings, victim: str, thief: str,
             request: EscalationRequested) -> None:
    """``thief`` signs a request in ``victim``'s name with its own key: refused and audited."""
    key = AgentKeyStore.from_settings(settings).load(thief).current
    with _AuditWatch(role_access(settings, topics.AUDITOR)) as watch:
        forged = sign_message(encode(request, source=f"/agents/{victim}"), key, thief)
        Publisher(role_access(settings, topics.AGENT), source="/impostor").publish_raw(
            topics.ESCALATIONS.name, forged)
        record = watch.wait(lambda a: a.subject_id == request.request_id, 15)
    rule = record.rules[0] if record is not None and record.rules else "-"
    s.say("broker", f"a request for {victim} signed with {thief}'s key: REJECTED [{rule}] "
          f"{record.reasons[0] if record is not None else ''}")
    s.check("a request signed with another agent's key is rejected and audited",
            rule == "identity:foreign-key", rule)


def token_step(s: Timeline, settings: Settings, client: AgentClient, grant_id: str,
               view: GrantView) -> tuple[GrantToken, GrantTokenVerifier, JwksView]:
    """The agent fetches a grant token; the payments service verifies it against the JWKS."""
    jwks = JwksView(role_access(settings, topics.SERVICE), issuer=settings.token_issuer)
    jwks.wait_ready(30)
    token = client.grant_token(grant_id, "payments")
    verifier = GrantTokenVerifier(jwks, audience="payments", grants=view)
    try:
        claims = verifier.verify(token.token)
        left = (claims.expires_at - datetime.now(UTC)).total_seconds()
        s.say("resource:payments", f"token verified with JWKS key {claims.kid[:12]}…: sub "
              f"{claims.agent_id}, scope {' '.join(claims.scopes)}, until "
              f"{claims.expires_at:%H:%M:%S}Z ({left:.1f}s left)")
        ok = claims.grant_id == grant_id and claims.scopes == ("payments:accounts.freeze",)
    except TokenRejected as exc:
        s.say("resource:payments", f"token refused: {exc}")
        ok = False
    s.check("a grant token (EdDSA, typ permbroker-grant+jwt, <= 60 s) verifies at payments", ok)
    return token, verifier, jwks


def token_refused(s: Timeline, token: GrantToken, verifier: GrantTokenVerifier) -> None:
    """After the revocation the same, unexpired token is refused."""
    deadline, code = time.monotonic() + 10, ""
    while time.monotonic() < deadline and not code:
        try:
            verifier.verify(token.token)
            time.sleep(0.01)
        except TokenRejected as exc:
            code = exc.code
    left = (token.expires_at - datetime.now(UTC)).total_seconds()
    s.say("resource:payments", f"the same token ({left:.1f}s before its exp): refused [{code}]")
    s.check("a revoked grant's token is refused before it expires", code == "grant-ended", code)


class _AuditWatch:
    """Reads the audit topic from its current end (started before the event is sent)."""

    def __init__(self, kafka: KafkaAccess) -> None:
        self._c = consumer(kafka)
        ends = end_offsets(self._c, topics.AUDIT.name)
        self._c.assign([TopicPartition(topics.AUDIT.name, p, o) for p, o in ends.items()])

    def wait(self, pred: Callable[[AuditRecord], bool], timeout: float) -> AuditRecord | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self._c.poll(0.1)
            if msg is None or msg.error():
                continue
            event = to_record(msg).event
            if isinstance(event, AuditRecord) and pred(event):
                return event
        return None

    def __enter__(self) -> _AuditWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._c.close()
