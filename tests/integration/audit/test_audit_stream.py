"""The tamper-evident audit on a real Kafka broker and Redis server, through the real worker."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from broker.adapters.audit import keys as audit_keys
from broker.adapters.audit.log import Stored
from broker.adapters.crypto.keystore import load_operator
from broker.adapters.kafka.admin import admin_client
from broker.adapters.redis import keyspace as keys
from broker.audit.redact import hmac_value
from broker.audit.verify import Entry
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentRevoked, AuditRecord, GrantExpired, GrantIssued
from tests.support.audit import (
    CANARIES,
    cli,
    cli_following,
    cli_process,
    copy_partition,
    records,
    report,
    sealed,
    seed,
    wait_sealed,
)
from tests.support.identities import agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
ACCOUNTS = ("acct-4411-0923", "acct-4411-7710")


def _demo(settings: Settings, fraud: str, reporter: str, tap: TapFactory) -> str:
    """The demo's steps with fresh agents; returns the request id of the fraud grant."""
    grants = tap(topics.GRANTS.name)
    with agent_client(settings, fraud) as f, agent_client(settings, reporter) as r:
        f.report_risk(kind="fraud_pattern", severity=0.93, resource=ACCOUNTS[0], detail="burst")
        unsure = f.request_escalation([FREEZE], resources=ACCOUNTS, duration_s=900,
                                      reason="maybe a ring", confidence=0.5, risk_score=0.93)
        assert unsure.outcome == "denied"
        granted = f.request_escalation([FREEZE, PII], resources=ACCOUNTS, duration_s=900,
                                       reason="card-testing ring", confidence=0.95,
                                       risk_score=0.93)
        assert granted.outcome == "granted"
        outside = f.request_escalation(["payments:transfers.create"], resources=[ACCOUNTS[0]],
                                       duration_s=300, reason="move funds", confidence=0.99,
                                       risk_score=0.93)
        assert outside.outcome == "denied"
        lapsing = r.request_escalation(["reports:ledger.export"], duration_s=2,
                                       reason="month-end export", confidence=0.97)
        assert lapsing.outcome == "granted"
        f.report_risk(kind="behaviour_anomaly", severity=0.95, subject_agent_id=fraud,
                      detail="query volume 40x")
        grants.wait_for(AgentRevoked, lambda e: e.agent_id == fraud)
        again = f.request_escalation([FREEZE], resources=[ACCOUNTS[0]], duration_s=600,
                                     reason="retry", confidence=0.99, risk_score=0.95)
        assert again.outcome == "denied"
    grants.wait_for(GrantExpired, lambda e: e.grant_id == lapsing.grant_id)
    return granted.request_id


def _mutations(entries: list[Stored], k: int) -> dict[str, list[Stored]]:
    """The partition with entry k altered, deleted, or swapped with k+1."""
    value = entries[k].entry.value or b""
    assert b'"outcome":"granted"' in value
    changed = value.replace(b'"outcome":"granted"', b'"outcome":"revoked"')
    altered = Stored(Entry(entries[k].entry.partition, entries[k].entry.offset, changed), 0)
    return {
        "altered": [*entries[:k], altered, *entries[k + 1:]],
        "deleted": [*entries[:k], *entries[k + 1:]],
        "swapped": [*entries[:k], entries[k + 1], entries[k], *entries[k + 2:]],
    }


def test_demo_scenario_verifies_and_each_tampering_is_named(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
    tmp_path: Path,
) -> None:
    """After the demo's steps `audit verify` passes; altering, deleting or swapping fails it."""
    fraud = agents("f")
    request_id = _demo(settings, fraud, agents("r"), tap)
    wait_sealed(settings)
    # The shared worker keeps auditing (other tests' expiries): entries chained after the wait
    # above are sealed within a digest interval, which is what --wait allows for.
    ok = cli_process(settings, "audit", "verify", "--complete", "--wait", "30", "--json")
    assert ok.returncode == 0 and report(ok)["ok"] is True, ok.stdout + ok.stderr
    mine = [s for s in sealed(settings) if request_id.encode() in (s.entry.value or b"")
            and b'"kind":"escalation.decided"' in (s.entry.value or b"")]
    target = json.loads(mine[-1].entry.value or b"")
    partition, seq = target["chain"]["partition"], target["chain"]["seq"]
    entries = [s for s in sealed(settings) if s.entry.partition == partition]
    k = next(i for i, s in enumerate(entries) if s.entry.offset == mine[-1].entry.offset)
    assert 0 < k < len(entries) - 1
    for name, changed in _mutations(entries, k).items():
        copy = copy_partition(settings, partition, lambda _e, c=changed: c)
        broken = cli(settings, "audit", "verify", "--topic", copy, "--json")
        problems = " | ".join(str(p) for p in report(broken)["problems"])
        assert broken.returncode == 1, (name, broken.stdout)
        assert f"seq {seq}" in problems, (name, problems)
        if name == "altered":
            assert target["audit_id"] in problems and "altered" in problems
        if name == "swapped":
            assert problems.count("out of order") == 2, problems
    untouched = copy_partition(settings, partition, lambda e: e)
    assert cli(settings, "audit", "verify", "--topic", untouched).returncode == 0
    _export_tampering(settings, tmp_path, target["audit_id"], seq)


def _export_tampering(settings: Settings, tmp_path: Path, audit_id: str, seq: int) -> None:
    """The same three tamperings on a JSONL export fail `audit verify --file`, named."""
    export = tmp_path / "audit.jsonl"
    assert cli(settings, "audit", "export", "--format", "jsonl", "--output",
               str(export)).returncode == 0
    assert cli(settings, "audit", "verify", "--file", str(export)).returncode == 0
    lines = export.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if json.loads(line)["entry"]["audit_id"] == audit_id)
    swapped = list(lines)
    nxt = next(i for i in range(k + 1, len(lines))
               if json.loads(lines[i])["partition"] == json.loads(lines[k])["partition"])
    swapped[k], swapped[nxt] = lines[nxt], lines[k]
    variants = {
        "altered": [*lines[:k], lines[k].replace('"granted"', '"revoked"', 1), *lines[k + 1:]],
        "deleted": [*lines[:k], *lines[k + 1:]],
        "swapped": swapped,
    }
    for name, content in variants.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(content) + "\n")
        result = cli(settings, "audit", "verify", "--file", str(path))
        assert result.returncode == 1 and f"seq {seq}" in result.stdout, (name, result.stdout)


def _active(client: redis.Redis, at: datetime) -> dict[str, GrantIssued]:
    """Grants whose Redis key lives beyond ``at`` (+2s, so none lapses while we compare)."""
    limit = int((at + timedelta(seconds=2)).timestamp() * 1000)
    out = {}
    for key in client.scan_iter(match=f"{keys.PREFIX}:{{*}}:grant:*", count=1000):
        if client.pexpiretime(key) > limit:
            grant = GrantIssued.model_validate_json(client.get(key) or b"{}")
            out[grant.grant_id] = grant
    return out


def test_replay_as_of_returns_exactly_the_grants_active_then(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
    rclient: redis.Redis,
) -> None:
    """Before the grant, while active, after revocation: replay lists what Redis held then."""
    agent, grants = agents("f"), tap(topics.GRANTS.name)
    snapshots = [(datetime.now(UTC), _active(rclient, datetime.now(UTC)))]
    with agent_client(settings, agent) as client:
        d = client.request_escalation([FREEZE, PII], resources=ACCOUNTS, duration_s=900,
                                      reason="pattern", confidence=0.95, risk_score=0.93)
        assert d.outcome == "granted"
        wait_until(lambda: rclient.exists(keys.grant(agent, d.grant_id or "")) == 1, 10, "grant")
        snapshots.append((datetime.now(UTC), _active(rclient, datetime.now(UTC))))
        client.report_risk(kind="behaviour_anomaly", severity=0.95, subject_agent_id=agent)
    grants.wait_for(AgentRevoked, lambda e: e.agent_id == agent)
    wait_until(lambda: rclient.exists(keys.grant(agent, d.grant_id or "")) == 0, 10, "revoked")
    snapshots.append((datetime.now(UTC), _active(rclient, datetime.now(UTC))))
    wait_sealed(settings)
    hmac_key = audit_keys.load_hmac_key(settings)
    seen = []
    for at, held in snapshots:
        result = cli(settings, "audit", "replay", "--as-of", at.isoformat(), "--json")
        assert result.returncode == 0, result.stderr
        replayed = {g["grant_id"]: g for g in report(result)["grants"]
                    if datetime.fromisoformat(g["expires_at"]) > at + timedelta(seconds=2)}
        assert set(replayed) == set(held), (at, set(replayed) ^ set(held))
        for gid, grant in held.items():
            assert datetime.fromisoformat(replayed[gid]["expires_at"]) == grant.expires_at
            assert set(replayed[gid]["scopes"]) == set(grant.scopes)
            assert set(replayed[gid]["resources"]) == {hmac_value(hmac_key, r)
                                                      for r in grant.resources}
        seen.append(d.grant_id in replayed)
    assert seen == [False, True, False]


def _raw_limit(settings: Settings, limit: str | None) -> None:
    """Make the raw audit topic refuse every write (max.message.bytes=1), or undo it."""
    op = AlterConfigOpType.SET if limit else AlterConfigOpType.DELETE
    entry = ConfigEntry("max.message.bytes", limit or "", incremental_operation=op)
    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.AUDIT_RAW.name,
                              incremental_configs=[entry])
    admin = admin_client(role_access(settings, topics.ADMIN))
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_unwritable_audit_denies_with_a_reason_and_loses_nothing(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
    rclient: redis.Redis,
) -> None:
    """With the raw audit topic refusing writes no grant is issued; once back, nothing is lost."""
    agent, grants = agents("f"), tap(topics.GRANTS.name)
    _raw_limit(settings, "1")
    try:
        with agent_client(settings, agent) as client:
            denied = client.request_escalation([FREEZE], resources=[ACCOUNTS[0]], duration_s=60,
                                               reason="pattern", confidence=0.99,
                                               risk_score=0.93)
    finally:
        _raw_limit(settings, None)
    assert denied.outcome == "denied" and {x.rule for x in denied.denied} == {"audit-unavailable"}
    assert "audit stream could not be written" in denied.reasons[0]
    assert "fail closed" in denied.reasons[0]
    assert not list(rclient.scan_iter(match=f"{keys.agent_prefix(agent)}grant:*"))
    with agent_client(settings, agent) as client:
        granted = client.request_escalation([FREEZE], resources=[ACCOUNTS[0]], duration_s=60,
                                            reason="pattern", confidence=0.99, risk_score=0.93)
    assert granted.outcome == "granted"
    issued = grants.wait_for(GrantIssued, lambda g: g.agent_id == agent)
    assert [g.request_id for g in issued] == [granted.request_id]
    wait_sealed(settings)  # every raw record chained: no gap, nothing lost
    mine = [r for r in records(settings) if r.agent_id == agent and r.kind == "escalation.decided"]
    by_request = {r.subject_id: r for r in mine}
    assert by_request[denied.request_id].outcome == "denied"
    assert by_request[denied.request_id].inputs["blocked_by"]["rule"] == "audit-unavailable"  # type: ignore[index]
    assert by_request[granted.request_id].outcome == "granted"


def test_seeded_secrets_are_stored_as_hmacs_and_searchable(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """Tokens, account numbers and free text never reach the audit in clear; their HMACs do."""
    agent, audit = agents("f"), tap(topics.AUDIT.name)
    token, account, text = seed("tok"), seed("acct-canary"), seed("free-text")
    jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ" + uuid.uuid4().hex + "In0.c2ln"
    CANARIES.append(jwt)
    with agent_client(settings, agent) as client:
        d = client.request_escalation(
            [FREEZE], resources=[account], duration_s=60, reason=f"case notes: {text}",
            confidence=0.95, risk_score=0.93, signals={"api_token": token, "note": f"see {jwt}"})
        client.report_risk(kind="unusual_volume", severity=0.3, subject_agent_id=agent,
                           resource=account, detail=f"seen with {text}")
    wait_sealed(settings)
    audit.wait_for(AuditRecord, lambda r: r.subject_id == d.request_id)
    found = cli_process(settings, "audit", "hash", account)
    assert found.returncode == 0
    stored = [s.entry.value or b"" for s in sealed(settings)]
    assert any(found.stdout.strip().encode() in v for v in stored)
    for secret in (token, account, text, jwt):
        assert not any(secret.encode() in v for v in stored), secret


def test_operator_actions_are_audited(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """`grants rebuild` and `agents revoke` by an operator each leave an audit record; the
    revocation names the operator whose key signed it."""
    agent, audit = agents("f"), tap(topics.AUDIT.name)
    principal, _key = load_operator(settings.key_path("operator"))
    assert cli(settings, "grants", "rebuild", "--json").returncode == 0
    assert cli(settings, "agents", "revoke", agent, "--reason", "offboarding",
               "--acks-wait", "0").returncode == 0
    rebuilt = audit.wait_for(AuditRecord, lambda r: r.kind == "operator.grants.rebuild")
    assert rebuilt[0].outcome == "rebuilt" and rebuilt[0].chain is not None
    revoked = audit.wait_for(AuditRecord, lambda r: r.kind == "risk.observed"
                             and r.agent_id == agent)[0]
    assert revoked.outcome == "revoked" and revoked.rules == ("operator-revoke",)
    assert revoked.inputs["signal"]["source"] == principal  # type: ignore[index]
    assert revoked.inputs["signed_by"] == principal


def test_audit_tail_shows_the_last_records_and_everything_since_then_ends(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """`audit tail` ends once it has shown what the topic held when it started: the record of
    an operator's revocation among the last ones of its partition, and with ``--since``
    before it, on whichever partition it landed; ``--last 0`` shows nothing."""
    agent, audit = agents("f"), tap(topics.AUDIT.name)
    before = datetime.now(UTC) - timedelta(seconds=1)
    assert cli(settings, "agents", "revoke", agent, "--reason", "tail",
               "--acks-wait", "0").returncode == 0
    audit.wait_for(AuditRecord, lambda r: r.agent_id == agent and r.kind == "risk.observed")

    def tailed(*args: str) -> list[dict[str, object]]:
        done = cli(settings, "audit", "tail", "--agent", agent, "--json", *args)
        assert done.returncode == 0, done.output
        return [json.loads(line) for line in done.stdout.splitlines()]

    assert "risk.observed" in {r["kind"] for r in tailed()}  # the last 50 of each partition
    since = tailed("--since", before.isoformat())
    assert "risk.observed" in {r["kind"] for r in since}
    assert all(r["agent_id"] == agent for r in since)
    assert tailed("--last", "0") == []


def test_audit_tail_follows_what_is_sealed_after_a_time_on_every_partition(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """`audit tail -f --since T` keeps following: an operator's revocation issued after it
    started is shown once it is sealed, and the command is still running."""
    agent = agents("f")
    since = datetime.now(UTC).isoformat()
    with cli_following(settings, "audit", "tail", "-f", "--since", since, "--agent", agent,
                       "--json") as next_line:
        time.sleep(3)  # the tail has started (it reads from T: nothing after T is missed)
        assert cli(settings, "agents", "revoke", agent, "--reason", "followed",
                   "--acks-wait", "0").returncode == 0
        kinds: set[str] = set()
        deadline = time.monotonic() + 60
        while "risk.observed" not in kinds and time.monotonic() < deadline:
            line = next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            shown = json.loads(line)
            assert shown["agent_id"] == agent, shown
            kinds.add(shown["kind"])
        assert "risk.observed" in kinds, kinds
