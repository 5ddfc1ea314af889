"""Crash recovery (kill -9 mid-burst) and rebuilding the Redis view from Kafka, on real services."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.audit.records import REBUILD
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, GrantExpired, GrantIssued
from tests.support.factories import anomaly, fraud_request
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]


@pytest.mark.slow
def test_kill_9_mid_burst_loses_nothing_and_duplicates_nothing(
    worker: WorkerProcess,
    settings: Settings,
    publisher: Publisher,
    tap: TapFactory,
    rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """kill -9 during 1,000 requests, restart: every request decided, 0 lost, 0 duplicate grants."""
    pool = [agents("b") for _ in range(50)]  # 10-minute grants: a slow restart cannot stale them
    requests = [fraud_request(pool[i % len(pool)]) for i in range(1000)]
    wanted = {r.request_id for r in requests}
    decisions, grants = tap(topics.DECISIONS.name), tap(topics.GRANTS.name)

    def decided() -> set[str]:
        return {
            d.request_id
            for d in decisions.events(EscalationDecided, lambda d: d.request_id in wanted)
        }

    publisher.publish_many(topics.ESCALATIONS.name, requests)
    wait_until(lambda: len(decided()) >= 300, 120, "300 decisions before the kill")
    worker.kill()
    at_kill = len(decided())
    worker.start()
    worker.wait_ready()
    wait_until(lambda: decided() == wanted, 180, "every request decided after the restart")

    by_request: dict[str, set[str]] = defaultdict(set)
    for d in decisions.events(EscalationDecided, lambda d: d.request_id in wanted):
        by_request[d.request_id].add(d.decision_id)
    assert all(len(v) == 1 for v in by_request.values()), "a request got two different decisions"
    granted = {
        d.request_id: d.grant_id
        for d in decisions.events(
            EscalationDecided, lambda d: d.request_id in wanted and d.outcome == "granted"
        )
    }
    issued: dict[str, set[str]] = defaultdict(set)
    for g in grants.events(GrantIssued, lambda g: g.request_id in wanted):
        issued[g.request_id].add(g.grant_id)
    assert set(issued) == set(granted), "a granted decision has no grant.issued, or vice versa"
    assert all(issued[r] == {granted[r]} for r in granted), "duplicate grant for one request"
    assert len(granted) == 1000, f"{1000 - len(granted)} requests unexpectedly denied"
    records = [rclient.exists(keys.decision(r.agent_id, r.request_id)) for r in requests]
    assert sum(records) == 1000
    assert 300 <= at_kill < 1000, f"the kill did not land mid-burst ({at_kill} decided)"


def _active(client: redis.Redis, now_ms: int) -> dict[str, tuple[str, int]]:
    """grant id -> (agent, PXAT) of every live grant key in Redis."""
    out = {}
    for key in client.scan_iter(match=f"{keys.PREFIX}:{{*}}:grant:*", count=1000):
        pxat = client.pexpiretime(key)
        if pxat > now_ms:
            g = GrantIssued.model_validate_json(client.get(key) or b"{}")
            out[g.grant_id] = (g.agent_id, pxat)
    return out


def test_rebuild_after_flush_restores_exactly_the_active_grants(
    worker: WorkerProcess,
    settings: Settings,
    publisher: Publisher,
    tap: TapFactory,
    rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """Worker stopped, FLUSHALL, then `permbroker grants rebuild`: active grants back, no expired
    or revoked one, and the rebuild's own audit record names the operator CLI as its actor."""
    active_agent, revoked_agent, lapsing_agent = agents("f"), agents("f"), agents("r")
    grants, audit = tap(topics.GRANTS.name), tap(topics.AUDIT_RAW.name)
    publisher.publish(topics.ESCALATIONS.name, fraud_request(active_agent))
    publisher.publish(topics.ESCALATIONS.name, fraud_request(revoked_agent))
    short = fraud_request(
        lapsing_agent, scopes=("reports:ledger.export",), resources=(), duration_s=1
    )
    publisher.publish(topics.ESCALATIONS.name, short)
    grants.wait_for(GrantIssued, lambda g: g.agent_id in {active_agent, revoked_agent}, count=2)
    publisher.publish(topics.RISK.name, anomaly(revoked_agent))
    grants.wait_for(GrantExpired, lambda e: e.agent_id == lapsing_agent)
    wait_until(
        lambda: not list(rclient.scan_iter(match=f"{keys.agent_prefix(revoked_agent)}grant:*")),
        30,
        "revocation applied",
    )
    worker.stop()  # nothing but the CLI may rebuild the view
    try:
        report, before, after, horizon = _flush_and_rebuild(settings, rclient)
    finally:
        worker.start()
        worker.wait_ready()
    assert any(agent == active_agent for agent, _ in before.values())
    # Compared on one horizon: a grant of `before` that lapsed while the rebuild ran is gone.
    assert after == {gid: held for gid, held in before.items() if held[1] > horizon}
    assert report["active_grants"] >= len(after)
    assert not any(agent in {revoked_agent, lapsing_agent} for agent, _ in after.values())
    assert rclient.exists(keys.quarantine(revoked_agent)) == 1, "quarantine not restored"
    (record,) = audit.wait_for(
        AuditRecord, lambda a: a.kind == REBUILD and a.occurred_at >= report["at"])
    assert str(record.inputs["actor"]).startswith("operator ")
    assert record.inputs["restored"] == report["active_grants"]
    assert not audit.events(AuditRecord, lambda a: a.kind == REBUILD
                            and str(a.inputs["actor"]).startswith("worker ")
                            and a.occurred_at >= report["at"])


def _flush_and_rebuild(
    settings: Settings, rclient: redis.Redis
) -> tuple[dict[str, Any], dict[str, tuple[str, int]], dict[str, tuple[str, int]], int]:
    """FLUSHALL then the CLI rebuild: (its report, active grants before, after, the horizon)."""
    margin = timedelta(seconds=3)  # grants about to lapse during the rebuild are left out of both
    before = _active(rclient, int((datetime.now(UTC) + margin).timestamp() * 1000))
    at = datetime.now(UTC)
    rclient.flushall()
    assert _active(rclient, 0) == {}
    assert rclient.get(keys.VIEW_EPOCH) is None
    out = subprocess.run(
        [sys.executable, "-m", "broker", "grants", "rebuild", "--json"],
        env=worker_env(settings, role_access(settings, topics.OPERATOR)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = {**json.loads(out.stdout), "at": at}
    assert rclient.get(keys.VIEW_EPOCH) is not None, "the CLI did not mark the view built"
    horizon = int((datetime.now(UTC) + margin).timestamp() * 1000)
    return report, before, _active(rclient, horizon), horizon
