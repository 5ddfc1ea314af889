"""Key rotation on the running worker, no restart: agents' keys and the broker's token keys."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.config import Settings
from broker.errors import TokenRejected
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided
from tests.support.factories import fraud_request
from tests.support.identities import Registrar, agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE = "payments:accounts.freeze"


def wait_past(when: datetime, what: str) -> None:
    """Wait (with a deadline) until the wall clock is past ``when``."""
    wait_until(lambda: datetime.now(UTC) > when, 30, what)


def test_agent_key_rotates_on_schedule_with_no_failed_verification_then_retires(
    worker: object, settings: Settings, tap: TapFactory, agents: Callable[[str], str],
    registrar: Registrar,
) -> None:
    """The SDK rotates every second while the agent keeps escalating: every request is decided
    (0 failed verifications); after the overlap, 100 % of events signed with retired keys are
    rejected as identity:key-retired."""
    agent = agents("b")
    audit = tap(topics.AUDIT.name)
    old = registrar.store.load(agent).current
    with agent_client(settings, agent) as client:
        rotator = client.start_rotation(1.0, overlap_s=2)
        decided: list[EscalationDecided] = []
        while rotator.rotations < 3:
            decided.append(client.request_escalation(
                [FREEZE], resources=["acct-1"], duration_s=60, reason="steady work",
                confidence=0.9))
        rotator.stop()
        assert rotator.failures == 0 and len(decided) >= 3
        assert all(d.outcome == "granted" for d in decided)
    record = read_registry(role_access(settings, topics.OPERATOR)).get(agent)
    assert record is not None
    retired = [k for k in record.keys if k.status == "retiring" and k.not_after is not None]
    assert len([k for k in record.keys if k.status == "active"]) == 1
    assert old.kid not in {k.kid for k in record.keys if k.status == "active"}
    wait_past(max(k.not_after for k in retired if k.not_after), "every old key's overlap")
    late = [fraud_request(agent) for _ in range(10)]
    thief = Publisher(role_access(settings, topics.AGENT), source="/old-key")
    for request in late:
        thief.publish_raw(topics.ESCALATIONS.name,
                          sign_message(encode(request, source="/old-key"), old, agent))
    wanted = {r.request_id for r in late}
    rejected = audit.wait_for(AuditRecord, lambda a: a.subject_id in wanted, count=10)
    assert {a.rules for a in rejected} == {("identity:key-retired",)}
    print(f"agent rotation: {rotator.rotations} rotations, {len(decided)} requests all decided "
          f"(0 failed), {len(rejected)}/{len(late)} old-key events rejected after retirement")


def test_broker_key_rotation_keeps_tokens_valid_in_the_overlap_and_refuses_them_after(
    worker: object, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """Tokens of the old and the new broker key both verify during the overlap (0 failures);
    once the old key retires from the published JWKS every token it signed is refused."""
    agent = agents("b")
    service = role_access(settings, topics.SERVICE)
    with agent_client(settings, agent) as client, JwksView(service) as jwks, \
            GrantView(service) as view:
        assert jwks.wait_ready(30) and view.wait_ready(30)
        verifier = GrantTokenVerifier(jwks, audience="payments", grants=view)
        grant = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=300,
                                          reason="long task", confidence=0.9).grant_id
        assert grant is not None
        wait_until(lambda: view.grant_state(agent, grant) == "active", 10, "grant in view")
        before = client.grant_token(grant, "payments")
        old_kid = verifier.verify(before.token).kid
        registrar.operator.rotate_broker_key(overlap_s=4)
        tokens, failures = [before.token], 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # inside the overlap: old and new tokens
            tokens.append(client.grant_token(grant, "payments").token)
            for token in tokens:
                try:
                    verifier.verify(token)
                except TokenRejected:
                    failures += 1
        kids = {verifier.verify(t).kid for t in tokens}
        assert failures == 0 and old_kid in kids and len(kids) == 2
        wait_until(lambda: jwks.get(old_kid) is None, 30, "old key retired from the JWKS")
        old_tokens = [t for t in tokens if t.split(".")[0] == before.token.split(".")[0]]
        outcomes = []
        for token in old_tokens:
            with pytest.raises(TokenRejected) as info:
                verifier.verify(token)
            outcomes.append(info.value.code)
        assert outcomes and set(outcomes) == {"unknown-kid"}
        checks = len(tokens) * (len(tokens) + 1) // 2
        print(f"broker rotation: {len(tokens)} tokens ({len(kids)} kids), ~{checks} verifications "
              f"in the overlap, {failures} failed; {len(outcomes)}/{len(old_tokens)} old-key "
              "tokens refused after retirement")
        fresh = client.grant_token(grant, "payments")
        assert verifier.verify(fresh.token).kid != old_kid
        assert fresh.expires_at <= datetime.now(UTC) + timedelta(seconds=61)
