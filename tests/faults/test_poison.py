"""The poison matrix: every hostile shape on every input and output topic stops nothing.

Each of {200 kB nested JSON, a key with a trailing newline, invalid UTF-8 key and value, 1 MB
value, a tombstone, an unknown major version, NaN, valid JSON of the wrong event type} goes onto
escalations, risk, approvals, registry, the grant topic and each namespace grant topic,
decisions, agents, JWKS and revocation acks, all at once, written by the admin user (past the
ACLs), every key naming a legitimate agent. Then one valid record of each topic: the worker, the
API and the grant views stay up and serve it (its time is a figure, bounded at 2 s); every
poison is dead-lettered (inputs) or counted with its origin (readers); killing and restarting
every process replays the poison without dying; the legitimate agent is never locked out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient

from broker.adapters.audit.log import watermarks
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import AckFollower
from broker.adapters.kafka.bus import Publisher, producer_config
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.edge import Refusals
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import RegistryView
from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.agent.client import DecisionWatcher
from broker.sdk.operator.approvals import Approver
from broker.sdk.operator.client import OperatorClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import (
    AuditRecord,
    EnforcementPointStatus,
    EscalationDecided,
    GrantIssued,
    RevocationAcknowledged,
)
from tests.support.enforcement import EXPORT, FREEZE, PII
from tests.support.faults.poisons import KINDS, poisons
from tests.support.faults.report import Figures
from tests.support.identities import agent_client, api_settings, new_service
from tests.support.taps import Tap
from tests.support.waits import wait_until

INPUTS = (topics.ESCALATIONS, topics.RISK, topics.APPROVALS, topics.REGISTRY)
GRANT_TOPICS = (topics.GRANTS, *topics.ROUTED_GRANT_TOPICS)
OUTPUTS = (*GRANT_TOPICS, topics.DECISIONS, topics.AGENTS, topics.JWKS, topics.REVOCATION_ACKS)
BOUND_S = 2.0


@dataclass
class Readers:
    """Every kind of reader, on one trust: grant views, registry, JWKS, acks, the API."""

    jwks: JwksView
    views: dict[str, GrantView]
    registry: RegistryView
    decisions: DecisionWatcher
    api: TestClient
    acks: list[RevocationAcknowledged | EnforcementPointStatus] = field(default_factory=list)

    def refused(self, topic: str) -> set[str]:
        """Origins of the records refused on ``topic``."""
        return {r.origin for r in self.jwks.trust.refusals.recent() if r.topic == topic}


@contextmanager
def readers(settings: Settings, agent: str, since: datetime) -> Iterator[Readers]:
    """Fresh readers (they replay what the topics hold; acks since ``since``; decisions from
    now on), closed afterwards."""
    service = role_access(settings, topics.SERVICE)
    with ExitStack() as stack:
        jwks = stack.enter_context(JwksView.from_settings(
            settings, service, refusals=Refusals(keep=2000)))  # every origin of this test kept
        trust = jwks.trust
        views = {t.name: stack.enter_context(GrantView(service, trust=trust, topic=t.name))
                 for t in GRANT_TOPICS}
        registry = RegistryView(service, trust)
        stack.callback(registry.close)
        operator = role_access(settings, topics.OPERATOR)  # reads decisions and acks
        decisions = DecisionWatcher(operator, trust=trust)
        stack.callback(decisions.close)
        api = stack.enter_context(TestClient(create_app(api_settings(settings, agent))))
        found = Readers(jwks, views, registry, decisions, api)
        acks = AckFollower(operator, since, found.acks.append, trust=trust)
        stack.callback(acks.close)
        # Every reader replays and verifies what the session's topics hold (the kill -9 and
        # flood tests leave tens of thousands of signed grant records), ten reader threads in
        # one process on two cores: readiness is a matter of minutes here, not of the poison.
        assert all(v.wait_ready(300) for v in views.values()) and registry.wait_ready(300), \
            f"views not ready; records per grant topic: {_sizes(service)}"
        wait_until(lambda: api.get("/readyz").status_code == 200, 300, "the API ready")
        yield found


def _sizes(kafka: KafkaAccess) -> dict[str, int]:
    """Records each grant topic holds (high - low watermark, summed over partitions)."""
    found = {}
    for t in GRANT_TOPICS:
        marks = watermarks(kafka, t.name)
        found[t.name] = sum(high - low for low, high in marks.values())
    return found


def _poison_everything(settings: Settings, victim: str) -> int:
    """All poisons on all topics at once (a 1 MB value needs a raised producer limit)."""
    admin = role_access(settings, topics.ADMIN)
    producer = Producer({**producer_config(admin), "message.max.bytes": 2 * 1024 * 1024})
    errors: list[object] = []
    sent = 0
    for topic in (*INPUTS, *OUTPUTS):
        for _kind, m in poisons(topic.name, victim):
            producer.produce(topic.name, value=m.value, key=m.key, headers=list(m.headers),
                             on_delivery=lambda err, _m: err and errors.append(err))
            sent += 1
    assert producer.flush(60) == 0 and not errors, errors[:3]
    return sent


def _served(figures: Figures, what: str, act: Callable[[], object],
            done: Callable[[], object]) -> None:
    """Time from a valid write to its reader serving it: a figure bounded at 2 s."""
    start = time.monotonic()
    act()
    wait_until(done, 30, what, every=0.005)
    figures.at_most(f"{what}: served (s)", round(time.monotonic() - start, 3), BOUND_S, " s")


def _serve_every_topic(settings: Settings, r: Readers, agents: Callable[[str], str],
                       victim: str, figures: Figures, phase: str) -> None:
    """One valid record of every topic, each served by its reader within the bound."""
    fresh = agents("f")  # registering it: registry -> agents
    _served(figures, f"{phase} agents record", lambda: None,
            lambda: r.registry.get(fresh) is not None)
    with agent_client(settings, victim) as client:
        decided: list[EscalationDecided] = []
        _served(figures, f"{phase} escalation decided", lambda: decided.append(
            client.request_escalation([FREEZE, PII], resources=["acct-1"], duration_s=900,
                                      reason="after the poison", confidence=0.95,
                                      risk_score=0.93)), lambda: decided)
        assert decided[0].outcome == "granted", decided[0].reasons
    _served(figures, f"{phase} grant topic", lambda: None,
            lambda: r.views[topics.GRANTS.name].allows(victim, FREEZE, "acct-1").allowed)
    _serve_namespace_topics(settings, r, victim, figures, phase)
    check = {"agent_id": victim, "scope": FREEZE, "resource": "acct-1",
             "consistency_token": decided[0].consistency_token}
    checker = new_service(settings, "poison-check")
    assert r.api.post("/v1/check", json=check, auth=checker).json()["allowed"]
    _revoke_and_ack(settings, r, fresh, figures, phase)
    _vote_and_rotate(settings, r, victim, figures, phase)


def _serve_namespace_topics(settings: Settings, r: Readers, victim: str, figures: Figures,
                            phase: str) -> None:
    """A grant of each namespace's scope, signed with the broker's keyring as the worker signs
    (this suite's worker routes no namespace), on that namespace's topic: its view allows it."""
    sign = RecordSigner(BrokerKeyring(settings.key_path("broker")))
    publisher = Publisher(role_access(settings, topics.ADMIN), source="/tests/poison")
    now = datetime.now(UTC)
    for topic, scope in ((topics.GRANTS_PAYMENTS, FREEZE), (topics.GRANTS_CRM, PII),
                         (topics.GRANTS_REPORTS, EXPORT)):
        grant = GrantIssued(grant_id=f"g-{uuid.uuid4().hex[:12]}", agent_id=victim,
                            request_id=f"req-{uuid.uuid4().hex[:8]}", scopes=(scope,),
                            resources=("acct-1",),
                            issued_at=now, expires_at=now + timedelta(minutes=15),
                            policy_revision="poison-matrix", rules=("poison-matrix",))
        view = r.views[topic.name]
        _served(figures, f"{phase} {topic.name}",
                lambda t=topic, g=grant: publisher.publish_raw(t.name, sign(encode(
                    g, source="/tests/poison"))),
                lambda v=view, s=scope: v.allows(victim, s, "acct-1").allowed)


def _revoke_and_ack(settings: Settings, r: Readers, holder: str, figures: Figures,
                    phase: str) -> None:
    """risk -> agent.revoked on the grant topics -> the API view's ack on the acks topic."""
    with agent_client(settings, holder) as client:
        d = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=900,
                                      reason="to be revoked", confidence=0.95, risk_score=0.93)
        assert d.outcome == "granted"
    view = r.views[topics.GRANTS.name]
    wait_until(lambda: view.allows(holder, FREEZE, "acct-1").allowed, 30, "holder allowed")
    with OperatorClient(settings, role_access(settings, topics.OPERATOR)) as op:
        _served(figures, f"{phase} risk signal (revocation)",
                lambda: op.revoke_grants(holder, reason="poison matrix"),
                lambda: not view.allows(holder, FREEZE, "acct-1").allowed)
    _served(figures, f"{phase} revocation ack", lambda: None, lambda: any(
        isinstance(a, RevocationAcknowledged) and a.agent_id == holder for a in r.acks))


def _vote_and_rotate(settings: Settings, r: Readers, victim: str, figures: Figures,
                     phase: str) -> None:
    """approvals (a signed vote, audited) and JWKS (a rotation, followed by the chain)."""
    audit = Tap(role_access(settings, topics.ADMIN), topics.AUDIT_RAW.name)
    try:
        approver = Approver.operator(settings, role_access(settings, topics.OPERATOR))
        request_id = f"req-{uuid.uuid4()}"  # no such request: the vote is audited as refused
        _served(figures, f"{phase} approval vote",
                lambda: approver.approve(request_id, victim, "poison matrix"),
                lambda: audit.events(AuditRecord, lambda a: a.kind == "approval.voted"
                                     and a.subject_id == request_id))
    finally:
        audit.close()
    before = r.jwks.current()
    with OperatorClient(settings, role_access(settings, topics.OPERATOR)) as op:
        _served(figures, f"{phase} key set (rotation)", lambda: op.rotate_broker_key(overlap_s=600),
                lambda: r.jwks.current() != before)


def _counted(r: Readers, dlq: Tap, figures: Figures, phase: str,
             outputs: tuple[topics.Topic, ...] = OUTPUTS) -> None:
    """Inputs: every poison dead-lettered with its origin; outputs: refused, with its origin."""
    for topic in INPUTS:
        named = [dict(d.headers) for d in dlq.records]
        origins = {(h.get(topics.DLQ_PARTITION), h.get(topics.DLQ_OFFSET)) for h in named
                   if h.get(topics.DLQ_TOPIC) == topic.name.encode()}
        figures.at_least(f"{phase} {topic.name}: dead-lettered with origin", len(origins),
                         len(KINDS))
    for topic in outputs:
        figures.at_least(f"{phase} {topic.name}: refused with origin by its reader",
                         len(r.refused(topic.name)), len(KINDS))


@pytest.mark.criterion("9")
@pytest.mark.timeout(1200)
def test_poison_on_every_topic_stops_nothing_and_locks_no_one_out(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    tap: Callable[[str], Tap], figures: Figures,
) -> None:
    """8 poisons x 12 topics: everything stays up, serves the next record, counts each poison,
    survives a restart of every process, and the legitimate agent is served throughout."""
    victim = agents("f")
    dlq = tap(topics.DEAD_LETTER.name)
    pid, since = worker.pid, datetime.now(UTC)
    with readers(settings, victim, since) as r:
        figures.equal("poison records written", _poison_everything(settings, victim),
                      len(KINDS) * (len(INPUTS) + len(OUTPUTS)))
        _serve_every_topic(settings, r, agents, victim, figures, "after")
        wait_until(lambda: sum(dict(d.headers).get(topics.DLQ_TOPIC) in {
            t.name.encode() for t in INPUTS} for d in dlq.records) >= len(KINDS) * len(INPUTS),
            60, "every input poison dead-lettered")
        _counted(r, dlq, figures, "after")
    figures.equal("worker crashes", int(worker.pid != pid or worker.proc is None
                                        or worker.proc.poll() is not None), 0)
    worker.kill()  # kill -9: whatever was in flight is redelivered to the new worker
    worker.start()
    worker.wait_ready(120)
    with readers(settings, victim, since) as r:  # every reader replays the poisoned topics
        _serve_every_topic(settings, r, agents, victim, figures, "restarted")
        # A decision watcher reads from its start on: it has no poison to replay.
        _counted(r, dlq, figures, "restarted",
                 tuple(t for t in OUTPUTS if t is not topics.DECISIONS))
        allowed = r.views[topics.GRANTS.name].allows(victim, FREEZE, "acct-1").allowed
        figures.check("restarted: the legitimate agent allowed",
                      "allowed" if allowed else "denied", "allowed", allowed)
    figures.equal("worker crashes after the restart", int(worker.proc is None
                                                          or worker.proc.poll() is not None), 0)
    figures.verify()
