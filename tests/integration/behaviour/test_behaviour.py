"""Behaviour analytics on real Kafka + Redis: a rate spike revokes by policy, across restarts.

The test policy's detectors are the fraud bundle's own (bucket 10s; rate_spike: window 1m,
baseline 30m, min_history 10m, factor 10, at least 20 requests), watching only the analytics-test
class (agents('n')); the bundle's rule ``revoke-on-rate-spike`` decides what a signal does.

Time is injected, not waited for: the analytics judge each decision by its own time
(``decided_at``), so the spike tests write the decisions topic as the worker would, with times
from a test clock reaching 25 minutes back, and the worker's analytics fold them, sign their
signal and revoke through the real risk path. Nothing is paced by sleeps.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from broker.adapters.crypto.analytics_key import ANALYTICS_PRINCIPAL, analytics_key_path
from broker.adapters.crypto.keystore import load_operator
from broker.adapters.crypto.signing import Presented, presented
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.stats.profiles import ProfileStore
from broker.api.app import create_app
from broker.behaviour.profiles import Profile
from broker.config import Settings
from broker.grants.decide import derive_id
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, EscalationRequested, RiskObserved
from tests.support.audit import cli
from tests.support.identities import api_settings, operator_auth
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def freeze(agent: str) -> EscalationRequested:
    """A request the analytics-test class is granted (a 10-minute freeze on one account)."""
    return EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=("payments:accounts.freeze",),
        resources=(f"acct-{uuid.uuid4().int % 10_000}",), duration_s=600, reason="scoring run",
        confidence=0.9, risk_score=0.5, requested_at=datetime.now(UTC))


class DecisionClock:
    """Decision times for the analytics: minute-aligned, starting 25 minutes before now."""

    def __init__(self, behind: timedelta = timedelta(minutes=25)) -> None:
        start = datetime.now(UTC) - behind
        self.t0 = start.replace(second=0, microsecond=0)

    def at(self, seconds: float) -> datetime:
        """``seconds`` after the clock's start."""
        return self.t0 + timedelta(seconds=seconds)


def decided(agent: str, at: datetime) -> EscalationDecided:
    """A granted freeze decided at ``at``, as the worker would write it to the decisions topic."""
    request_id = f"req-{uuid.uuid4()}"
    return EscalationDecided(
        decision_id=derive_id("decision", request_id, agent), request_id=request_id,
        agent_id=agent, outcome="granted", granted_scopes=("payments:accounts.freeze",),
        resources=(f"acct-{uuid.uuid4().int % 10_000}",),
        grant_id=derive_id("grant", request_id, agent), expires_at=at + timedelta(minutes=10),
        duration_s=600, matched_rules=("analytics-test-freeze",), policy_revision="test-clock",
        decided_at=at)


@pytest.fixture
def as_worker(settings: Settings) -> Publisher:
    """Writes the decisions topic as the worker does: as the worker's Kafka user, each record
    signed with the broker's keyring (the analytics read only what the broker signed)."""
    return Publisher(role_access(settings, topics.WORKER), source="/tests/decisions",
                     signer=RecordSigner(BrokerKeyring(settings.key_path("broker"))))


def history(as_worker: Publisher, agent: str, times: list[datetime]) -> None:
    """Write the agent's decisions at ``times`` (in order) to the decisions topic."""
    as_worker.publish_many(topics.DECISIONS.name, [decided(agent, t) for t in times])


def spike(clock: DecisionClock, start_s: float, count: int = 20) -> list[datetime]:
    """``count`` decision times 2 s apart from ``start_s`` on: all within one minute."""
    return [clock.at(start_s + 2 * i) for i in range(count)]


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
    publisher.publish_many(topics.ESCALATIONS.name, [freeze(agent) for _ in range(3)])
    wait_until(profiled(settings, agent, 3), 60, "three requests profiled")
    wait_until(lambda: group(settings)["windows"][-1]["requests"]
               - before["windows"][-1]["requests"] == 3, 30, "the class counted three")
    after = group(settings)
    assert after["agent_class"] == "analytics-test" and after["model_version"] == "1.0"
    assert [w["window_s"] for w in after["windows"]] == [10, 60, 1800]
    assert after["windows"][-1]["requests"] - before["windows"][-1]["requests"] == 3
    assert after["windows"][-1]["granted"] - before["windows"][-1]["granted"] == 3
    data = stats(settings, agent)
    assert data is not None and data["totals"] == {"requests": 3, "granted": 3, "denied": 0}
    assert data["agent_class"] == "analytics-test" and data["model_version"] == "1.0"
    assert [w["window_s"] for w in data["windows"]] == [10, 60, 1800]
    assert data["windows"][-1]["requests"] == 3 and data["scopes"].keys() == {
        "payments:accounts.freeze"} and data["resource_patterns"].keys() == {"acct-#"}
    assert datetime.fromisoformat(data["expires_at"]) > datetime.now(UTC)
    table = cli(settings, "agents", "stats", agent)
    assert table.returncode == 0 and "per minute" in table.stdout and "Z (" in table.stdout
    assert re.search(r"\d+\.\d+s", table.stdout) is None, "durations are humanised (14m 59s)"
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
    as_worker: Publisher, tap: Callable[[str], Tap], rclient: redis.Redis,
) -> None:
    """An agent that suddenly sends 20x its usual rate is revoked by the shipped thresholds; one
    at 5x is not; the audit shows the signed signal, its evidence and the rule that acted."""
    spiky, steady = agents("n"), agents("n")
    audit, risk, decisions = tap(topics.AUDIT_RAW.name), tap(topics.RISK.name), \
        tap(topics.DECISIONS.name)
    first = freeze(spiky)
    publisher.publish(topics.ESCALATIONS.name, first)
    (granted,) = decisions.wait_for(EscalationDecided, lambda d: d.request_id == first.request_id)
    assert granted.outcome == "granted" and granted.grant_id
    clock = DecisionClock()
    # Usual rates, over 20 minutes: one a minute (spiky), four a minute (steady).
    history(as_worker, spiky, [clock.at(60 * m) for m in range(20)])
    history(as_worker, steady, [clock.at(15 * q) for q in range(80)])
    history(as_worker, steady, spike(clock, 20 * 60 + 30))  # 20 in a minute: 5x its usual
    history(as_worker, spiky, spike(clock, 20 * 60 + 30))  # 20 in a minute: 20x its usual

    record = audit.wait_for(AuditRecord, risk_audit(spiky), timeout=90)[0]
    signal = record.inputs["signal"]
    assert isinstance(signal, dict)
    evidence = signal["evidence"]
    print(f"\nspike: revoked {record.inputs['revoked_grants']} by {record.rules}; {evidence}")
    assert record.outcome == "revoked" and record.rules == ("revoke-on-rate-spike",)
    assert signal["kind"] == "behaviour_anomaly" and signal["source"] == "permbroker-analytics"
    assert evidence["detector"] == "rate_spike" and evidence["threshold_factor"] == 10
    assert evidence["requests"] == 20 and evidence["window_s"] == 60
    assert evidence["baseline_requests"] == 20 and 600 <= evidence["baseline_s"] <= 1800
    assert 19 <= evidence["factor"] <= 21  # about one a minute: its usual rate
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
    # The steady agent: every decision folded into its profile, and no signal about it.
    wait_until(profiled(settings, steady, 100), 90, "the steady agent's 100 decisions profiled")
    wait_until(profiled(settings, spiky, 41), 90, "the spiky agent's 41 decisions profiled")
    assert audit.events(AuditRecord, risk_audit(steady)) == []
    assert rclient.pttl(keys.behaviour(spiky)) > 0 and rclient.pttl(keys.behaviour(steady)) > 0


def test_profiles_and_windows_survive_a_worker_restart(
    settings: Settings, agents: Callable[[str], str], as_worker: Publisher,
    tap: Callable[[str], Tap], worker: WorkerProcess,
) -> None:
    """kill -9 mid-baseline: the window keeps the decisions from before the restart, nothing is
    counted twice, and the spike after it is judged against that baseline."""
    agent = agents("n")
    audit = tap(topics.AUDIT_RAW.name)
    clock = DecisionClock()
    history(as_worker, agent, [clock.at(120 * k) for k in range(5)])  # one every 2 minutes
    wait_until(profiled(settings, agent, 5), 60, "five decisions profiled before the kill")
    before = stats(settings, agent)
    assert before is not None
    worker.kill()
    worker.start()
    worker.wait_ready(180)
    history(as_worker, agent, [clock.at(120 * k) for k in range(5, 10)])
    wait_until(profiled(settings, agent, 10), 90, "ten decisions profiled after the restart")
    after = stats(settings, agent)
    assert after is not None and after["totals"]["requests"] == 10  # redeliveries not recounted
    assert after["first_seen"] == before["first_seen"] == clock.t0.isoformat()
    history(as_worker, agent, spike(clock, 20 * 60 + 30))
    record = audit.wait_for(AuditRecord, risk_audit(agent), timeout=90)[0]
    signal = record.inputs["signal"]
    assert isinstance(signal, dict)
    evidence = signal["evidence"]
    print(f"\nafter restart: {after['totals']} by {record.rules}; {evidence}")
    assert record.rules == ("revoke-on-rate-spike",) and record.outcome == "revoked"
    assert evidence["baseline_requests"] == 10  # the pre-restart five are in the baseline
    assert evidence["requests"] == 20 and 600 <= evidence["baseline_s"] <= 1800
    wait_until(profiled(settings, agent, 30), 90, "every decision profiled")


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


async def test_a_tenants_class_patterns_and_counts_are_its_own(
    settings: Settings, rclient: redis.Redis,
) -> None:
    """A pattern acme's agents of a class used is known for acme's class only: globex's class
    of the same name and the default tenant's still find it new, and a request counted for
    acme's class and model is in acme's counts alone."""
    store, klass = ProfileStore.from_url(settings.redis_url), f"twin-{uuid.uuid4().hex[:10]}"
    now = int(time.time() * 1000)
    later, bucket = now + 60_000, now - now % 1000
    pattern = "scope:payments:accounts.freeze"
    try:
        await store.learn(klass, (pattern,), now, later, "acme")
        await store.count_group(klass, "1.0", bucket, True, later, "acme")
        assert (await store.class_view(klass, (pattern,), "acme")).known == {pattern}
        for other in ("globex", topics.DEFAULT_TENANT):
            view = await store.class_view(klass, (pattern,), other)
            assert view.requests == 0 and view.known == frozenset(), other
            assert await store.group_window(klass, "1.0", [bucket], other) == (0, 0, 0)
        assert await store.group_window(klass, "1.0", [bucket], "acme") == (1, 1, 0)
        assert 0 < rclient.pttl(keys.behaviour_class(klass, "acme")) <= 60_000
    finally:
        rclient.delete(keys.behaviour_class(klass, "acme"),
                       keys.behaviour_group(klass, "1.0", bucket, "acme"))
        await store.close()
