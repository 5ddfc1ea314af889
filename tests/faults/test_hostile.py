"""Hostile and bad input on the session worker: a mixed 10,000 burst, abusive parameters,
malformed revocations and schema evolution. Every bad message must be dead-lettered with its
reason and audited; every good one decided; nothing skipped silently; the worker never crashes."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher, producer_config
from broker.adapters.kafka.codec import MAX_VALUE_BYTES, Encoded, encode
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentRevoked, AuditRecord, EscalationDecided
from tests.support.factories import anomaly, fraud_request
from tests.support.faults.helpers import delta, worker_counters
from tests.support.faults.report import Figures
from tests.support.identities import harness_signer
from tests.support.taps import Tap
from tests.support.waits import wait_until

TapFactory = Callable[[str], Tap]
OVERSIZE = 1024 * 1024 - 16 * 1024  # ~1 MiB: as large as Kafka's default 1 MiB limit lets in


def _with(good: Encoded, value: bytes, key: bytes | None = None) -> Encoded:
    return Encoded(key=good.key if key is None else key, value=value, headers=good.headers)


def _mutated(agent: str, **fields: object) -> Encoded:
    """A request encoded normally, then its JSON fields overwritten (bypassing our models)."""
    good = encode(fraud_request(agent), source="/tests/hostile")
    body = json.loads(good.value) | fields
    return _with(good, json.dumps(body).encode())


def _bad(kind: str, agent: str, n: int) -> Encoded:
    good = encode(fraud_request(agent), source="/tests/hostile")
    if kind == "json":
        return _with(good, good.value[: len(good.value) // 2])
    if kind == "types":
        field, value = [("duration_s", "15m"), ("confidence", "high"),
                        ("scopes", "payments:accounts.freeze")][n % 3]
        return _mutated(agent, **{field: value})
    return _with(good, b'{"pad": "' + b"x" * (OVERSIZE - 12) + b'"}')


def _raw_producer(kafka: KafkaAccess) -> Producer:
    """A hostile sender: it raises its own message size limit to what the broker accepts."""
    return Producer({**producer_config(kafka), "message.max.bytes": 2 * 1024 * 1024})


def _send_raw(producer: Producer, topic: str, messages: list[Encoded]) -> None:
    errors: list[object] = []
    for m in messages:
        while True:
            try:
                producer.produce(topic, value=m.value, key=m.key, headers=list(m.headers),
                                 on_delivery=lambda err, _m: err and errors.append(err))
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(120) == 0 and not errors, f"Kafka refused the burst: {errors[:3]}"


def _plan(agents: Callable[[str], str],
          sign: Callable[[Encoded], Encoded]) -> tuple[list[Encoded], dict[str, int], set[str]]:
    """10,000 messages: 1% malformed JSON, 0.5% wrong types, 0.1% ~1 MiB, the rest good.

    Each is signed by its agent (the bad ones too: a buggy agent, not an impostor).
    """
    pool = [agents("b") for _ in range(100)]
    messages, bad, good_ids = [], {"json": 0, "types": 0, "oversized": 0}, set()
    for i in range(10_000):
        agent = pool[i % len(pool)]
        kind = "json" if i % 100 == 7 else "types" if i % 200 == 13 else (
            "oversized" if i % 1000 == 501 else None)
        if kind is None:
            request = fraud_request(agent)
            good_ids.add(request.request_id)
            messages.append(sign(encode(request, source="/tests/hostile")))
        else:
            bad[kind] += 1
            messages.append(sign(_bad(kind, agent, i)))
    return messages, bad, good_ids


@pytest.mark.criterion("9")
def test_10000_with_malformed_wrong_typed_and_oversized_messages(
    worker: WorkerProcess, settings: Settings, tap: TapFactory, agents: Callable[[str], str],
    figures: Figures,
) -> None:
    """1% bad JSON, 0.5% wrong types, 0.1% ~1 MiB: all dead-lettered with reasons and audited."""
    messages, bad, good_ids = _plan(agents, harness_signer(AgentKeyStore.from_settings(settings)))
    dlq, audit, decisions = tap(topics.DEAD_LETTER.name), tap(topics.AUDIT.name), tap(
        topics.DECISIONS.name)
    pid, before = worker.pid, worker_counters(settings.metrics_port)
    _send_raw(_raw_producer(role_access(settings, topics.AGENT)), topics.ESCALATIONS.name, messages)

    def decided() -> set[str]:
        return {d.request_id for d in decisions.events(
            EscalationDecided, lambda d: d.request_id in good_ids)}

    wait_until(lambda: decided() == good_ids, 600, "every good request decided")
    wait_until(lambda: len(dlq.records) >= 160, 60, "160 dead letters")
    after = worker_counters(settings.metrics_port)
    reasons = [dict(r.headers).get(topics.DLQ_REASON, b"").decode() for r in dlq.records]

    def dead_letter_audits() -> list[AuditRecord]:
        return audit.events(AuditRecord, lambda a: a.kind == "message.dead_lettered")

    # The sealer copies each audit record after the dead letter is out: wait for it, then count.
    wait_until(lambda: len(dead_letter_audits()) >= 160, 60, "160 dead letters audited")
    audited = dead_letter_audits()
    figures.equal("good requests decided", len(decided()), len(good_ids))
    figures.equal("dead letters (bad JSON)", sum("not valid JSON" in r for r in reasons),
                  bad["json"])
    figures.equal("dead letters (wrong types)", sum("schema-invalid" in r for r in reasons),
                  bad["types"])
    figures.equal("dead letters (~1 MiB)", sum("exceeds" in r for r in reasons), bad["oversized"])
    figures.equal("dead letters in all", len(dlq.records), 160)
    figures.equal("dead letters audited", len(audited), 160)
    figures.at_most("largest dead letter (bytes)", max(len(r.raw or b"") for r in dlq.records),
                    MAX_VALUE_BYTES)
    figures.equal("worker counter dead_lettered", delta(after, before, "dead_lettered"), 160)
    figures.equal("worker counter decided", delta(after, before, "decided_granted")
                  + delta(after, before, "decided_denied"), len(good_ids))
    figures.equal("worker crashes (pid changed or exited)",
                  int(worker.pid != pid or worker.proc is None or worker.proc.poll() is not None),
                  0)
    figures.verify()


@pytest.mark.criterion("11")
def test_abusive_parameters_are_rejected_or_clamped_and_audited(
    worker: WorkerProcess, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str], figures: Figures,
) -> None:
    """10-year, 0 and negative durations, 10,000 scopes, a 10 KiB agent id, wildcards: audited."""
    agent = agents("f")
    audit, decisions = tap(topics.AUDIT.name), tap(topics.DECISIONS.name)
    long_id = "a" * 10 * 1024
    rejected = {
        "duration of 10 years": (_mutated(agent, duration_s=10 * 365 * 86400), "duration_s"),
        "duration 0": (_mutated(agent, duration_s=0), "duration_s"),
        "negative duration": (_mutated(agent, duration_s=-60), "duration_s"),
        "10,000 scopes": (_mutated(agent, scopes=[f"payments:accounts.s{i}" for i in range(
            10_000)]), "exceeds"),  # 269 KB: the size limit refuses it before the schema
        "10 KiB agent id": (_with(_mutated(agent), _mutated(agent, agent_id=long_id).value,
                                  key=long_id.encode()), "key of 10240 bytes"),  # the edge's
        # size limit on the key refuses it before the id's pattern is read
        "wildcard scope": (_mutated(agent, scopes=["payments:*"]), "scopes"),
        "10,000 resources": (_mutated(agent, resources=[f"a{i}" for i in range(10_000)]),
                             "resources"),
    }
    clamped = fraud_request(agent, duration_s=7 * 86400)  # the longest the schema allows
    for message, _field in rejected.values():
        publisher.publish_raw(topics.ESCALATIONS.name, message)
    publisher.publish(topics.ESCALATIONS.name, clamped)
    d = decisions.wait_for(EscalationDecided, lambda d: d.request_id == clamped.request_id,
                           timeout=120)[0]
    dead = audit.wait_for(AuditRecord, lambda a: a.kind == "message.dead_lettered" and (
        a.agent_id in (agent, None)), count=len(rejected), timeout=60)
    for name, (_message, field) in rejected.items():
        named = [a for a in dead if field in a.reasons[0]]
        figures.check(f"{name}: audited rejection naming '{field}'", len(named),
                      ">= 1", len(named) >= 1)
    long_audit = [a for a in dead if "key of 10240 bytes" in a.reasons[0]]
    figures.check("10 KiB id echoed in audit (chars)", max(
        len(json.dumps(a.inputs)) for a in long_audit), "<= 2,000",
        all(len(json.dumps(a.inputs)) <= 2000 for a in long_audit))
    decided_audit = audit.wait_for(AuditRecord, lambda a: a.subject_id == clamped.request_id)[0]
    figures.check("7-day request clamped to", f"{d.duration_s}s by {d.clamped_by}",
                  "20s by fraud-freeze-on-pattern",
                  d.duration_s == 20 and "fraud-freeze-on-pattern" in (d.clamped_by or ""))
    figures.check("clamp reason in the decision's audit", "; ".join(decided_audit.reasons)[-80:],
                  "names the rule", any("clamped by rule fraud-freeze-on-pattern" in r
                                        for r in decided_audit.reasons))
    figures.verify()


@pytest.mark.criterion("10")
def test_malformed_revocations_are_never_skipped(
    worker: WorkerProcess, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str], figures: Figures,
) -> None:
    """A risk signal that cannot be read revokes the agent its key names, else is audited."""
    holders = [agents("b") for _ in range(3)]
    grants, audit = tap(topics.GRANTS.name), tap(topics.AUDIT.name)
    decisions = tap(topics.DECISIONS.name)
    requests = [fraud_request(a) for a in holders]
    publisher.publish_many(topics.ESCALATIONS.name, requests)
    for r in requests:
        decisions.wait_for(EscalationDecided, lambda d, r=r: d.request_id == r.request_id)
    good = encode(anomaly(holders[0]), source="/tests/hostile")
    body = json.loads(good.value)
    v2 = [(k, b"io.permbroker.risk.observed.v2" if k == "ce_type" else v)
          for k, v in encode(anomaly(holders[2]), source="/t").headers]
    malformed = [
        Encoded(holders[0].encode(), good.value[:40], good.headers),  # bad JSON
        Encoded(holders[1].encode(), json.dumps(body | {"subject_agent_id": holders[1],
                                                        "severity": 7}).encode(), good.headers),
        Encoded(holders[2].encode(), encode(anomaly(holders[2]), source="/t").value, v2),
        Encoded(None, b"\x00garbage", good.headers),  # names no agent at all
        Encoded(b"{not an agent}", b"[]", good.headers),
    ]
    for m in malformed:
        publisher.publish_raw(topics.RISK.name, m)
    revoked = [grants.wait_for(AgentRevoked, lambda e, a=a: e.agent_id == a, timeout=60)[0]
               for a in holders]
    dead = audit.wait_for(AuditRecord, lambda a: a.kind == "message.dead_lettered"
                          and a.subject_id.startswith(topics.RISK.name), count=5, timeout=60)
    figures.equal("malformed risk signals sent", len(malformed), 5)
    figures.equal("agents named by a key: all grants revoked",
                  sum(r.rule == "undecodable-risk-signal" and len(r.grant_ids) == 1
                      for r in revoked), 3)
    figures.equal("dead-lettered and audited", len(dead), 5)
    figures.equal("silently dropped", len(malformed) - len(dead), 0)
    figures.verify()


@pytest.mark.criterion("13")
def test_previous_and_next_minor_versions_are_decided_unknown_major_dead_lettered(
    worker: WorkerProcess, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str], figures: Figures,
) -> None:
    """v1, v1.0 and v1.7 (+ a field v1.0 lacks) decided; v2 dead-lettered; v1 + extra refused."""
    agent = agents("f")
    decisions, dlq = tap(topics.DECISIONS.name), tap(topics.DEAD_LETTER.name)
    base = "io.permbroker.escalation.requested"

    def typed(ce_type: str, extra: dict[str, object] | None = None) -> tuple[str, Encoded]:
        req = fraud_request(agent)
        m = encode(req, source="/tests/evolution")
        value = json.dumps(json.loads(m.value) | (extra or {})).encode()
        headers = [(k, ce_type.encode() if k == "ce_type" else v) for k, v in m.headers]
        return req.request_id, Encoded(m.key, value, headers)

    decided_cases = {"v1": typed(f"{base}.v1"), "v1.0": typed(f"{base}.v1.0"),
                     "v1.7 with a new field": typed(f"{base}.v1.7", {"priority": "high"})}
    dead_cases = {"v2": typed(f"{base}.v2"),
                  "v1 with an unknown field": typed(f"{base}.v1", {"priority": "high"})}
    for _rid, m in (*decided_cases.values(), *dead_cases.values()):
        publisher.publish_raw(topics.ESCALATIONS.name, m)
    for name, (rid, _m) in decided_cases.items():
        d = decisions.wait_for(EscalationDecided, lambda d, rid=rid: d.request_id == rid)[0]
        figures.check(f"{name}: decided", d.outcome, "granted", d.outcome == "granted")
    wait_until(lambda: len([r for r in dlq.records if r.key == agent.encode()]) >= 2, 60,
               "two dead letters")
    reasons = [dict(r.headers)[topics.DLQ_REASON].decode() for r in dlq.records
               if r.key == agent.encode()]
    figures.check("v2: dead-lettered", "unknown event type" if any(
        "unknown event type" in r for r in reasons) else "; ".join(reasons), "unknown event type",
        any("unknown event type" in r for r in reasons))
    figures.check("v1 + unknown field: dead-lettered", "extra field refused" if any(
        "priority" in r for r in reasons) else "; ".join(reasons), "schema-invalid",
        any("priority" in r for r in reasons))
    figures.verify()
