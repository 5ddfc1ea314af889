"""Behaviour analytics on real Kafka + Redis: a rate spike revokes by policy, across restarts.

The test policy's detectors watch only the analytics-test class (agents('n')), with windows of
seconds: bucket 1s, rate_spike window 2s, baseline 300s (longer than a slow restart),
min_history 8s, factor 8, at least 12 requests, cooldown 30s. The fraud bundle's rule
``revoke-on-rate-spike`` decides what the signal does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from broker.adapters.crypto.analytics_key import ANALYTICS_PRINCIPAL, analytics_key_path
from broker.adapters.crypto.keystore import load_operator
from broker.adapters.crypto.signing import Presented, presented
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.profiles import ProfileStore
from broker.api.app import create_app
from broker.behaviour.profiles import Profile
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, EscalationRequested, RiskObserved
from tests.support.audit import cli
from tests.support.identities import api_settings, operator_auth
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
USUAL_EVERY_S = 1.0  # the agents' usual rate: one request a second
BURST = 40  # twenty times that rate for two seconds


def freeze(agent: str) -> EscalationRequested:
    """A request the analytics-test class is granted (a 10-minute freeze on one account)."""
    return EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=("payments:accounts.freeze",),
        resources=(f"acct-{uuid.uuid4().int % 10_000}",), duration_s=600, reason="scoring run",
        confidence=0.9, risk_score=0.5, requested_at=datetime.now(UTC))


def send_paced(publisher: Publisher, agent: str, count: int, every_s: float) -> None:
    """Send ``count`` requests, one every ``every_s`` (the workload's rate, not a wait)."""
    start = time.monotonic()
    for i in range(count):
        publisher.publish(topics.ESCALATIONS.name, freeze(agent))
        pause = start + (i + 1) * every_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def stats(settings: Settings, agent: str) -> dict[str, Any] | None:
    """``permbroker agents stats AGENT --json`` (None while it has no profile)."""
    ran = cli(settings, "agents", "stats", agent, "--json")
    return json.loads(ran.stdout) if ran.returncode == 0 else None


def group(settings: Settings) -> dict[str, Any]:
    """``permbroker agents class-stats analytics-test --model 1.0 --json``."""
    ran = cli(settings, "agents", "class-stats", "analytics-test", "--model", "1.0", "--json")
    assert ran.returncode == 0, ran.stderr
    data: dict[str, Any] = json.loads(ran.stdout)
    return data


def profiled(settings: Settings, agent: str, count: int) -> Callable[[], bool]:
    def done() -> bool:
        found = stats(settings, agent)
        return found is not None and found["totals"]["requests"] >= count
    return done


def risk_audit(agent: str) -> Callable[[AuditRecord], bool]:
    return lambda r: r.kind == "risk.observed" and r.agent_id == agent


def test_stats_through_the_cli_and_the_api(
    settings: Settings, agents: Callable[[str], str], publisher: Publisher,
) -> None:
    """`agents stats` (table and --json) and the operator API show one profile, absolute times."""
    agent = agents("n")
    before = group(settings)
    send_paced(publisher, agent, 3, 0.2)
    wait_until(profiled(settings, agent, 3), 60, "three requests profiled")
    wait_until(lambda: group(settings)["windows"][-1]["requests"]
               - before["windows"][-1]["requests"] == 3, 30, "the class counted three")
    after = group(settings)
    assert after["agent_class"] == "analytics-test" and after["model_version"] == "1.0"
    assert [w["window_s"] for w in after["windows"]] == [1, 2, 300]
    assert after["windows"][-1]["requests"] - before["windows"][-1]["requests"] == 3
    assert after["windows"][-1]["granted"] - before["windows"][-1]["granted"] == 3
    data = stats(settings, agent)
    assert data is not None and data["totals"] == {"requests": 3, "granted": 3, "denied": 0}
    assert data["agent_class"] == "analytics-test" and data["model_version"] == "1.0"
    assert [w["window_s"] for w in data["windows"]] == [1, 2, 300]
    assert data["windows"][-1]["requests"] == 3 and data["scopes"].keys() == {
        "payments:accounts.freeze"} and data["resource_patterns"].keys() == {"acct-#"}
    assert datetime.fromisoformat(data["expires_at"]) > datetime.now(UTC)
    table = cli(settings, "agents", "stats", agent)
    assert table.returncode == 0 and "per minute" in table.stdout and "Z (" in table.stdout
    missing = cli(settings, "agents", "stats", "nobody-here")
    assert missing.returncode == 1 and "no behaviour profile" in missing.stderr
    op = operator_auth(settings)
    with TestClient(create_app(api_settings(settings, agent))) as api:
        path = f"/v1/operator/agents/{agent}/stats"
        assert api.get(path).status_code == 401
        served = api.get(path, auth=op).json()
        assert served["totals"] == data["totals"] and served["first_seen"] == data["first_seen"]
        assert api.get("/v1/operator/agents/nobody-here/stats", auth=op).status_code == 404
        served_group = api.get("/v1/operator/classes/analytics-test/models/1.0/stats",
                               auth=op).json()
        assert served_group["windows"][-1]["requests"] >= after["windows"][-1]["requests"] - 3


def test_twenty_times_the_usual_rate_is_revoked_by_policy(
    settings: Settings, agents: Callable[[str], str], publisher: Publisher,
    tap: Callable[[str], Tap], rclient: redis.Redis,
) -> None:
    """An agent that suddenly sends 20x its usual rate is revoked; a 2x one is not; the audit
    shows the signed signal, its evidence and the rule that acted."""
    spiky, steady = agents("n"), agents("n")
    audit, risk, decisions = tap(topics.AUDIT_RAW.name), tap(topics.RISK.name), \
        tap(topics.DECISIONS.name)
    first = freeze(spiky)
    publisher.publish(topics.ESCALATIONS.name, first)
    (granted,) = decisions.wait_for(EscalationDecided, lambda d: d.request_id == first.request_id)
    assert granted.outcome == "granted" and granted.grant_id
    for agent in (spiky, steady):
        send_paced(publisher, agent, 11, USUAL_EVERY_S / 2)  # the two interleave: 1/s each
    send_paced(publisher, steady, 4, 0.5)  # twice its usual rate: not far above it
    send_paced(publisher, spiky, BURST, 2.0 / BURST)

    record = audit.wait_for(AuditRecord, risk_audit(spiky), timeout=90)[0]
    signal = record.inputs["signal"]
    assert isinstance(signal, dict)
    evidence = signal["evidence"]
    print(f"\nspike: revoked {record.inputs['revoked_grants']} by {record.rules}; {evidence}")
    assert record.outcome == "revoked" and record.rules == ("revoke-on-rate-spike",)
    assert signal["kind"] == "behaviour_anomaly" and signal["source"] == "permbroker-analytics"
    assert evidence["detector"] == "rate_spike" and evidence["threshold_factor"] == 8
    assert evidence["factor"] >= 8 and evidence["requests"] >= 12
    assert 0 < evidence["baseline_per_window"] <= 4  # about 2 per 2s window: its usual rate
    assert granted.grant_id in record.inputs["revoked_grants"]
    assert record.inputs["quarantine_s"] == 600
    (finding,) = audit.wait_for(AuditRecord, lambda r: r.kind == "behaviour.anomaly"
                                and r.subject_id == signal["signal_id"])
    assert finding.rules == ("detector:rate_spike",) and finding.inputs["evidence"] == evidence
    # Signed by the analytics identity, which the gate admitted like any operator's signal.
    (sent,) = [r for r in risk.records if isinstance(r.event, RiskObserved)
               and r.event.signal_id == signal["signal_id"]]
    _principal, key = load_operator(analytics_key_path(settings))
    sig = presented(list(sent.headers))
    assert isinstance(sig, Presented) and sig.kid == key.kid
    assert _principal == ANALYTICS_PRINCIPAL
    # The steady agent: every request folded into its profile, and no signal about it.
    wait_until(profiled(settings, steady, 15), 60, "the steady agent's 15 requests profiled")
    assert audit.events(AuditRecord, risk_audit(steady)) == []
    assert rclient.pttl(keys.behaviour(spiky)) > 0 and rclient.pttl(keys.behaviour(steady)) > 0


def test_profiles_and_windows_survive_a_worker_restart(
    settings: Settings, agents: Callable[[str], str], publisher: Publisher,
    tap: Callable[[str], Tap], worker: WorkerProcess,
) -> None:
    """kill -9 mid-baseline: the window keeps the requests from before the restart, nothing is
    counted twice, and the spike after it is judged against that baseline."""
    agent = agents("n")
    audit = tap(topics.AUDIT_RAW.name)
    send_paced(publisher, agent, 5, USUAL_EVERY_S)
    wait_until(profiled(settings, agent, 5), 60, "five requests profiled before the kill")
    before = stats(settings, agent)
    assert before is not None
    worker.kill()
    worker.start()
    worker.wait_ready(180)
    send_paced(publisher, agent, 5, USUAL_EVERY_S)
    wait_until(profiled(settings, agent, 10), 90, "ten requests profiled after the restart")
    after = stats(settings, agent)
    assert after is not None and after["totals"]["requests"] == 10  # redeliveries not recounted
    assert after["first_seen"] == before["first_seen"]
    send_paced(publisher, agent, BURST, 2.0 / BURST)
    record = audit.wait_for(AuditRecord, risk_audit(agent), timeout=90)[0]
    signal = record.inputs["signal"]
    assert isinstance(signal, dict)
    evidence = signal["evidence"]
    print(f"\nafter restart: {after['totals']} by {record.rules}; {evidence}")
    assert record.rules == ("revoke-on-rate-spike",) and record.outcome == "revoked"
    assert evidence["baseline_requests"] == 10  # the pre-restart five are in the baseline
    first = datetime.fromisoformat(before["first_seen"]).timestamp()
    assert evidence["baseline_s"] >= 8 and time.time() - first >= evidence["baseline_s"]


async def test_profile_store_never_folds_a_decision_twice(
    settings: Settings, rclient: redis.Redis,
) -> None:
    """The compare-and-set on (partition, offset) refuses a redelivery; every key has a PXAT."""
    store, agent = ProfileStore.from_url(settings.redis_url), f"cas-{uuid.uuid4().hex[:10]}"
    profile = Profile(bucket_ms=1000, requests=1)
    later = int(time.time() * 1000) + 60_000
    try:
        assert await store.save(agent, profile, (3, 5), later)
        assert not await store.save(agent, replace(profile, requests=2), (3, 5), later)
        assert not await store.save(agent, replace(profile, requests=2), (3, 4), later)
        assert (await store.load(agent)) == (profile, (3, 5))
        assert await store.save(agent, replace(profile, requests=2), (3, 6), later)
        assert await store.save(agent, replace(profile, requests=3), (7, 0), later)  # topic grew
        assert 0 < rclient.pttl(keys.behaviour(agent)) <= 60_000
        await store.learn("some-class", ("scope:a:b.c",), later - 60_000, later)
        view = await store.class_view("some-class", ("scope:a:b.c", "scope:a:b.d"))
        assert view.requests >= 1 and view.known == frozenset({"scope:a:b.c"})
        assert 0 < rclient.pttl(keys.behaviour_class("some-class")) <= 60_000
    finally:
        rclient.delete(keys.behaviour(agent))
        await store.close()
