"""Replaying recorded decisions on real Kafka and Redis: determinism, what-if without effects."""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentRevoked, AuditRecord, EscalationDecided, EscalationRequested
from tests.support.audit import cli, cli_process, kafka_ends, redis_snapshot, report, wait_sealed
from tests.support.factories import anomaly, fraud_request
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
TRANSFER, EXPORT = "payments:transfers.create", "reports:ledger.export"


def _wait_quiet(client: redis.Redis, horizon_s: float = 30.0) -> None:
    """Wait until no grant expires within ``horizon_s``: the worker will write nothing meanwhile."""

    def quiet() -> bool:
        soon = int((time.time() + horizon_s) * 1000)
        return not any(client.zrangebyscore(index, "-inf", soon, start=0, num=1)
                       for index in keys.expiry_indexes())

    wait_until(quiet, 60, "no grant expiring soon")


def _lasting(snapshot: dict[bytes, tuple[bytes | None, int]], after_ms: int) -> dict[bytes, object]:
    """Keys that cannot lapse on their own before ``after_ms`` (no TTL, or a later one)."""
    return {k: v for k, v in snapshot.items() if v[1] == -1 or v[1] > after_ms}


def test_policy_diff_reports_exactly_the_changed_requests_and_writes_nothing(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], publisher: Publisher,
    tap: TapFactory, rclient: redis.Redis, test_policy: Path, tmp_path: Path,
) -> None:
    """Lowering the fraud agents' confidence threshold flips exactly the 0.8-0.9 requests."""
    decisions = tap(topics.DECISIONS.name)
    since = datetime.now(UTC)
    sent: dict[str, float] = {}
    for agent in (agents("f") for _ in range(6)):
        for confidence in (0.75, 0.82, 0.85, 0.88, 0.95):
            request = fraud_request(agent, confidence=confidence, duration_s=2,
                                    scopes=(FREEZE,), resources=("acct-1",))
            publisher.publish(topics.ESCALATIONS.name, request)
            sent[request.request_id] = confidence
    decided = decisions.wait_for(EscalationDecided, lambda d: d.request_id in sent,
                                 count=len(sent))
    assert {d.request_id for d in decided if d.outcome == "granted"} == {
        r for r, c in sent.items() if c >= 0.9}
    candidate = tmp_path / "candidate"
    shutil.copytree(test_policy, candidate)
    agents_file = candidate / "agents.yaml"
    text = agents_file.read_text()
    agents_file.write_text(text.replace("confidence_threshold: 0.9", "confidence_threshold: 0.8"))
    _wait_quiet(rclient)
    wait_sealed(settings)
    before, ends = redis_snapshot(rclient), kafka_ends(settings)
    result = cli_process(settings, "policy", "diff", "--candidate", str(candidate),
                         "--since", since.isoformat(), "--json")
    after_ms = int(time.time() * 1000) + 1000
    assert result.returncode == 0, result.stderr
    diff = report(result)
    changed = {c["request_id"]: c["category"] for c in diff["changes"]}
    assert changed == {r: "denied -> granted" for r, c in sent.items() if 0.8 <= c < 0.9}
    assert diff["compared"] == len(sent) and diff["unchanged"] == len(sent) - len(changed)
    assert diff["counts"] == {"granted -> denied": 0, "denied -> granted": 18,
                              "scopes changed": 0, "resources changed": 0, "duration changed": 0}
    assert kafka_ends(settings) == ends, "policy diff wrote to Kafka"
    assert _lasting(redis_snapshot(rclient), after_ms) == _lasting(before, after_ms), (
        "policy diff changed Redis")


def _traffic(rng: random.Random, pools: dict[str, list[str]], n: int) -> list[EscalationRequested]:
    """``n`` requests mixing grants, clamps, ceilings, resource limits and unknown agents.

    Bulk-test agents (10-minute grants) keep a share granted however slowly a loaded machine
    decides; fraud (20s) and report (8s) requests may also be denied as stale: all are replayed.
    """
    out = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.4:
            agent = rng.choice(pools["f"])
            scopes = tuple(rng.sample([FREEZE, PII, TRANSFER], rng.randint(1, 2)))
        elif roll < 0.65:
            agent = rng.choice(pools["r"])
            scopes = (EXPORT,) if rng.random() < 0.8 else (FREEZE,)
        elif roll < 0.9:
            agent, scopes = rng.choice(pools["b"]), tuple(rng.sample([FREEZE, PII], 1))
        else:
            agent, scopes = rng.choice(pools["x"]), (FREEZE,)
        resources = tuple(f"acct-{rng.randint(1, 40)}" for _ in range(rng.choice([0, 1, 2, 11])))
        out.append(fraud_request(
            agent, scopes=scopes, resources=tuple(dict.fromkeys(resources)),
            confidence=round(rng.uniform(0.5, 1.0), 3), risk_score=round(rng.uniform(0.5, 1), 3),
            duration_s=rng.randint(60, 1800), reason=f"replay load {rng.random()}"))
    return out


def test_replay_reproduces_every_recorded_decision(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], publisher: Publisher,
    tap: TapFactory, run_id: str,
) -> None:
    """1,050 recorded requests (live risk, quarantines, revocations): 100 % reproduced, 0 drift."""
    rng = random.Random(5)
    pools = {kind: [agents(kind) for _ in range(size)] for kind, size in (("f", 20), ("r", 8),
                                                                          ("b", 8))}
    pools["x"] = [f"stranger-{run_id}-{i}" for i in range(3)]
    fraud = pools["f"]
    decisions, grants = tap(topics.DECISIONS.name), tap(topics.GRANTS.name)
    since = datetime.now(UTC)
    first, second = (_traffic(rng, pools, n) for n in (450, 600))
    publisher.publish_many(topics.ESCALATIONS.name, first)
    for agent in fraud[:3]:  # noted, not revoking: live risk 0.75 denies PII by deny rule
        publisher.publish(topics.RISK.name, anomaly(agent, severity=0.75).model_copy(
            update={"kind": "unusual_volume"}))
    for agent in fraud[3:5]:  # revoking: later requests meet the revocation or the quarantine
        publisher.publish(topics.RISK.name, anomaly(agent))
    grants.wait_for(AgentRevoked, lambda e: e.agent_id in fraud[3:5], count=2, timeout=120)
    publisher.publish_many(topics.ESCALATIONS.name, second)
    wanted = {r.request_id for r in first + second}
    seen = decisions.wait_for(EscalationDecided, lambda d: d.request_id in wanted,
                              count=len(wanted), timeout=240)
    rules = Counter(x.rule for d in seen for x in d.denied)
    assert Counter(d.outcome for d in seen)["granted"] > 100
    for rule in ("default-deny", "ceiling:fraud-detection", "ceiling:reporting", "unknown-agent",
                 "fraud-freeze-on-pattern", "no-pii-for-risky-agent",
                 "revoke-on-behaviour-anomaly"):
        assert rules[rule] > 0, (rule, rules)
    wait_sealed(settings, timeout=120)
    result = cli(settings, "audit", "replay", "--check", "--since", since.isoformat(), "--json")
    check = report(result)
    assert result.returncode == 0, check
    assert check["drift"] == [] and check["missing_revisions"] == {}
    assert check["reproduced"] == check["decisions"] - check["confirmations"]
    assert check["reproduced"] >= len(wanted) >= 1000


def test_replay_reports_drift_naming_the_record(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], publisher: Publisher,
    tap: TapFactory, test_policy: Path, tmp_path: Path,
) -> None:
    """An export whose recorded decision was changed replays as drift naming that record."""
    audit, since = tap(topics.AUDIT.name), datetime.now(UTC)
    request = fraud_request(agents("b"))  # a 10-minute class: granted however loaded the host
    publisher.publish(topics.ESCALATIONS.name, request)
    record = audit.wait_for(AuditRecord, lambda r: r.subject_id == request.request_id
                            and r.kind == "escalation.decided")[0]
    assert record.outcome == "granted"
    duration = record.inputs["decision"]["duration_s"]  # type: ignore[index]
    wait_sealed(settings)
    export = tmp_path / "audit.jsonl"
    assert cli(settings, "audit", "export", "--since", since.isoformat(), "--output",
               str(export)).returncode == 0
    lines = export.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if record.audit_id in line)
    assert lines[k].count(f'"duration_s": {duration}, ') == 1
    lines[k] = lines[k].replace(f'"duration_s": {duration}, ', f'"duration_s": {duration + 1}, ')
    export.write_text("\n".join(lines) + "\n")
    result = cli(settings, "audit", "replay", "--check", "--file", str(export), "--policy",
                 str(test_policy))
    assert result.returncode == 1, result.stdout
    assert "DRIFT" in result.stdout and record.audit_id in result.stdout
    assert f"duration_s: recorded {duration + 1}, replayed {duration}" in result.stdout
