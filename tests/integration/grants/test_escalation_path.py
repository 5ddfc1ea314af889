"""The escalation path on a real Kafka broker and Redis server, through a real worker process."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from broker.adapters.kafka.bus import Publisher, Record
from broker.adapters.kafka.codec import Encoded, encode
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import (
    AgentRevoked,
    AuditRecord,
    EscalationDecided,
    GrantIssued,
    GrantRevoked,
)
from tests.support.factories import anomaly, fraud_request
from tests.support.fixtures import keys_without_ttl
from tests.support.identities import agent_client, shared_trust
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration

TapFactory = Callable[[str], Tap]


def grant_keys(client: redis.Redis, agent_id: str) -> list[bytes]:
    """The grant keys Redis holds for one agent."""
    return list(client.scan_iter(match=f"{keys.agent_prefix(agent_id)}grant:*"))


def test_fraud_request_is_granted_narrowed_and_clamped(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str]
) -> None:
    """A confident fraud agent gets freeze + PII on its two accounts, clamped to the rule's 20s."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        d = client.request_escalation(
            ["payments:accounts.freeze", "crm:customer.pii.read"],
            resources=["acct-1", "acct-2"],
            duration_s=900,
            reason="pattern",
            confidence=0.95,
            risk_score=0.93,
        )
    assert d.outcome == "granted"
    assert set(d.granted_scopes) == {"payments:accounts.freeze", "crm:customer.pii.read"}
    assert set(d.resources) == {"acct-1", "acct-2"}
    assert d.duration_s == 20 and d.clamped_by and "fraud-freeze-on-pattern" in d.clamped_by
    assert d.expires_at is not None and d.expires_at > datetime.now(UTC)


def test_a_request_published_three_times_yields_exactly_one_grant(
    worker: WorkerProcess,
    settings: Settings,
    publisher: Publisher,
    tap: TapFactory,
    rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """One request published 3 times (each copy signed afresh, at its own offset): one grant,
    one unchanged expires_at, one decision; the copies are audited as duplicates. (The same
    record consumed again at its own offset: tests/integration/grants/test_redelivery.py.)"""
    agent = agents("f")
    decisions, grants, audit = (
        tap(topics.DECISIONS.name),
        tap(topics.GRANTS.name),
        tap(topics.AUDIT.name),
    )
    request = fraud_request(agent)
    message = encode(request, source="/tests")
    for _ in range(3):
        publisher.publish_raw(topics.ESCALATIONS.name, message)
    dupes = audit.wait_for(
        AuditRecord,
        lambda a: a.subject_id == request.request_id and a.kind == "escalation.duplicate",
        count=2,
    )
    decided = decisions.events(EscalationDecided, lambda d: d.request_id == request.request_id)
    issued = grants.events(GrantIssued, lambda g: g.agent_id == agent)
    assert len({d.decision_id for d in decided}) == 1 and len(decided) == 1
    assert decided[0].outcome == "granted"
    assert len(issued) == 1 and issued[0].expires_at == decided[0].expires_at
    assert len(grant_keys(rclient, agent)) == 1
    pxat = rclient.pexpiretime(grant_keys(rclient, agent)[0])
    assert pxat == int(issued[0].expires_at.timestamp() * 1000)
    assert all(a.outcome == "duplicate" for a in dupes)
    decided_audit = audit.events(
        AuditRecord, lambda a: a.subject_id == request.request_id and a.kind == "escalation.decided"
    )
    assert len(decided_audit) == 1


def test_malformed_and_invalid_messages_go_to_the_dead_letter_topic(
    worker: WorkerProcess,
    settings: Settings,
    publisher: Publisher,
    tap: TapFactory,
    agents: Callable[[str], str],
) -> None:
    """Garbage and a schema-invalid request go to the DLQ with a reason; the next is decided."""
    agent = agents("f")
    dlq, decisions = tap(topics.DEAD_LETTER.name), tap(topics.DECISIONS.name)
    good = encode(fraud_request(agent), source="/tests")
    garbage = Encoded(key=agent.encode(), value=b'{"request_id": "x", oops', headers=good.headers)
    invalid_req = fraud_request(agent).model_dump(mode="json") | {"confidence": 7}
    invalid = Encoded(
        key=agent.encode(), value=json.dumps(invalid_req).encode(), headers=good.headers
    )
    for message in (garbage, invalid, good):
        publisher.publish_raw(topics.ESCALATIONS.name, message)
    valid_request_id = json.loads(good.value)["request_id"]
    decisions.wait_for(EscalationDecided, lambda d: d.request_id == valid_request_id)
    dead = _dead_letters(dlq, agent, count=2)
    reasons = [dict(h)["dlq_reason"].decode() for h in dead]
    raws = [dict(h)["raw"] for h in dead]
    assert any("not a binary-mode CloudEvent" in r or "JSON" in r for r in reasons), reasons
    assert any("schema-invalid" in r and "confidence" in r for r in reasons), reasons
    assert garbage.value in raws and invalid.value in raws
    for h in dead:
        origin = dict(h)
        assert origin["dlq_topic"] == topics.ESCALATIONS.name.encode()
        assert int(origin["dlq_offset"]) >= 0 and int(origin["dlq_partition"]) >= 0


def _dead_letters(dlq: Tap, agent: str, count: int) -> list[list[tuple[str, bytes]]]:
    """Headers (+ the raw value as 'raw') of dead letters keyed by ``agent``."""

    def found() -> list[Record]:
        mine = [r for r in dlq.records if r.key == agent.encode()]
        return mine if len(mine) >= count else []

    letters = wait_until(found, 30, f"{count} dead letters for {agent}")
    return [[*r.headers, ("raw", r.raw or b"")] for r in letters]


def test_revocation_is_never_undone(
    worker: WorkerProcess,
    settings: Settings,
    publisher: Publisher,
    tap: TapFactory,
    rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """After revocation a late duplicate and a new request are denied and audited."""
    agent = agents("f")
    grants, audit, decisions = (
        tap(topics.GRANTS.name),
        tap(topics.AUDIT.name),
        tap(topics.DECISIONS.name),
    )
    request = fraud_request(agent)
    message = encode(request, source="/tests")
    publisher.publish_raw(topics.ESCALATIONS.name, message)
    issued = grants.wait_for(GrantIssued, lambda g: g.agent_id == agent)[0]
    publisher.publish(topics.RISK.name, anomaly(agent))
    revoked = grants.wait_for(AgentRevoked, lambda e: e.agent_id == agent)[0]
    assert revoked.grant_ids == (issued.grant_id,) and revoked.quarantined_until is not None
    assert grants.wait_for(GrantRevoked, lambda e: e.grant_id == issued.grant_id)
    # The late duplicate of the granted request, then a brand-new request in quarantine.
    publisher.publish_raw(topics.ESCALATIONS.name, message)
    fresh = fraud_request(agent)
    publisher.publish(topics.ESCALATIONS.name, fresh)
    dup = audit.wait_for(
        AuditRecord,
        lambda a: a.subject_id == request.request_id and a.kind == "escalation.duplicate",
    )[0]
    assert dup.outcome == "denied" and "never undone" in dup.reasons[0]
    new = decisions.wait_for(EscalationDecided, lambda d: d.request_id == fresh.request_id)[0]
    assert new.outcome == "denied"
    assert {d.rule for d in new.denied} == {"revoke-on-behaviour-anomaly"}
    assert audit.wait_for(
        AuditRecord, lambda a: a.subject_id == fresh.request_id and a.outcome == "denied"
    )
    assert grant_keys(rclient, agent) == []
    assert len(grants.events(GrantIssued, lambda g: g.agent_id == agent)) == 1
    with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings)) as view:
        assert view.wait_ready(30)
        assert not view.allows(agent, "payments:accounts.freeze", "acct-1").allowed


def test_no_agent_key_lacks_a_ttl(worker: WorkerProcess, rclient: redis.Redis) -> None:
    """Every per-agent key written so far (grants, indexes, markers, records) has an expiry."""
    assert list(rclient.scan_iter(match=keys.AGENT_KEY_PATTERN, count=1000)), "nothing to check"
    assert keys_without_ttl(rclient) == []
