"""Redis killed mid-burst and restarted, and Redis wiped, on a private stack (own Kafka, Redis
and worker): checks deny while the view is missing, the worker rebuilds it from Kafka before it
allows anything, active grants come back exactly, and no revoked grant returns."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentRevoked, EscalationDecided, GrantIssued
from tests.support.factories import anomaly, fraud_request
from tests.support.faults import private
from tests.support.faults.exposure import Exposure
from tests.support.faults.report import Figures
from tests.support.identities import shared_trust
from tests.support.taps import Tap
from tests.support.waits import wait_until

Private = tuple[Settings, WorkerProcess]


@pytest.fixture(scope="module")
def private_stack(test_policy: Path, run_id: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    """Kafka + Redis + a worker of this module only."""
    with private.private_services(test_policy, run_id, tmp_path_factory.mktemp("private")) as s:
        yield s


def _active(client: redis.Redis, margin_s: float = 3.0) -> set[str]:
    """Grant ids with a live key that will not lapse within ``margin_s``."""
    horizon = int((time.time() + margin_s) * 1000)
    return {k.decode().rsplit(":", 1)[1] for k in client.scan_iter(
        match=f"{keys.PREFIX}:{{*}}:grant:*", count=1000) if client.pexpiretime(k) > horizon}


def _store(settings: Settings) -> RedisGrantStore:
    return RedisGrantStore.from_url(settings.redis_url)


@pytest.mark.criterion("5")
def test_wiped_redis_allows_nothing_until_rebuilt_then_exactly_the_active_grants(
    private_stack: Private, agents: Callable[[str], str], figures: Figures,
) -> None:
    """FLUSHALL under a running worker: checks deny until it rebuilt; then the same grants."""
    settings, _worker = private_stack
    publisher = private.publisher(settings, "/tests/wipe")
    grants = Tap(role_access(settings, topics.ADMIN), topics.GRANTS.name)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        holders, revoked = [agents("b") for _ in range(20)], agents("b")
        private.register(settings, [*holders, revoked])
        publisher.publish_many(topics.ESCALATIONS.name,
                               [fraud_request(a) for a in [*holders, revoked]])
        grants.wait_for(GrantIssued, lambda g: g.agent_id in {*holders, revoked}, count=21)
        publisher.publish(topics.RISK.name, anomaly(revoked))
        grants.wait_for(AgentRevoked, lambda e: e.agent_id == revoked)
        before = _active(client)
        client.flushall()
        probes = [(a, "payments:accounts.freeze", "acct-1") for a in holders[:5]]
        made, allowed = asyncio.run(_probe(settings, client, probes))
        wait_until(lambda: _active(client) == before, 30, "active grants restored")
        figures.at_least("checks made between the wipe and the rebuild", made, 1)
        figures.equal("of them allowed", allowed, 0)
        figures.equal("active grants after the rebuild vs before (symmetric difference)",
                      len(_active(client) ^ before), 0)
        figures.equal("revoked agent's grants back", sum(
            1 for _ in client.scan_iter(match=f"{keys.agent_prefix(revoked)}grant:*")), 0)
        figures.equal("revoked agent still quarantined", client.exists(keys.quarantine(revoked)), 1)
    finally:
        grants.close()
        client.close()
    figures.verify()


async def _probe(settings: Settings, client: redis.Redis,
                 probes: list[tuple[str, str, str]]) -> tuple[int, int]:
    store = _store(settings)
    made = allowed = 0
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for agent, scope, resource in probes:
                verdict = await store.check(agent, scope, resource, datetime.now(UTC))
                # The rebuild restores every grant, then writes each slot's "built" marker,
                # then the epoch. Once written a marker stays: an allow with the agent's marker
                # absent *after* it is a violation; an allow once it is there is the rebuilt
                # view answering.
                rebuilt = bool(client.exists(keys.view_marker(agent)))
                made, allowed = made + 1, allowed + (verdict.allowed and not rebuilt)
                if client.exists(keys.VIEW_EPOCH):
                    return made, allowed
        raise AssertionError("view not rebuilt within 60s")
    finally:
        await store.aclose()


async def _probe_down(settings: Settings, probes: list[tuple[str, str, str]],
                      seconds: float) -> tuple[int, int, float]:
    """Checks while Redis is down: (made, allowed, slowest seconds)."""
    store = _store(settings)
    made = allowed = 0
    slowest = 0.0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for agent, scope, resource in probes:
                started = time.monotonic()
                verdict = await store.check(agent, scope, resource, datetime.now(UTC))
                slowest = max(slowest, time.monotonic() - started)
                made, allowed = made + 1, allowed + verdict.allowed
    finally:
        await store.aclose()
    return made, allowed, slowest


@pytest.mark.criterion("4")
def test_redis_killed_mid_burst_denies_then_rebuilds_and_no_revoked_grant_returns(
    private_stack: Private, agents: Callable[[str], str], figures: Figures,
) -> None:
    """kill -9 Redis during 600 requests: checks deny fast; rebuilt before allowing; 0 lost."""
    settings, _worker = private_stack
    publisher = private.publisher(settings, "/tests/redis-kill")
    decisions = Tap(role_access(settings, topics.ADMIN), topics.DECISIONS.name)
    grants = Tap(role_access(settings, topics.ADMIN), topics.GRANTS.name)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
    try:
        revoked, pool = agents("b"), [agents("b") for _ in range(30)]
        private.register(settings, [revoked, *pool])
        publisher.publish(topics.ESCALATIONS.name, fraud_request(revoked))
        grants.wait_for(GrantIssued, lambda g: g.agent_id == revoked)
        publisher.publish(topics.RISK.name, anomaly(revoked))
        grants.wait_for(AgentRevoked, lambda e: e.agent_id == revoked)
        burst = [fraud_request(pool[i % 30]) for i in range(600)]
        late = fraud_request(revoked)
        wanted = {r.request_id for r in [*burst, late]}
        publisher.publish_many(topics.ESCALATIONS.name, [*burst[:300], late, *burst[300:]])

        def seen() -> list[EscalationDecided]:
            return decisions.events(EscalationDecided, lambda d: d.request_id in wanted)

        wait_until(lambda: len({d.request_id for d in seen()}) >= 150, 120, "150 decided")
        private.kill("redis")
        probes = [(a, "payments:accounts.freeze", "acct-1") for a in pool[:3]]
        made, allowed, slowest = asyncio.run(_probe_down(settings, probes, 3.0))
        private.restart()
        _made2, allowed2 = asyncio.run(_probe(settings, client, probes))
        wait_until(lambda: {d.request_id for d in seen()} == wanted, 300, "every request decided")
        answers: dict[str, set[tuple[object, ...]]] = defaultdict(set)
        for d in seen():
            answers[d.request_id].add((d.outcome, d.grant_id, d.expires_at))
        late_d = [d for d in seen() if d.request_id == late.request_id]
        figures.equal("checks allowed while Redis was down", allowed, 0)
        figures.at_least("checks made while Redis was down", made, 1)
        figures.at_most("slowest denial while Redis was down (s)", round(slowest, 3), 2.5)
        figures.equal("checks allowed after restart, before the rebuild", allowed2, 0)
        figures.equal("lost decisions", len(wanted - {d.request_id for d in seen()}), 0)
        figures.equal("requests with conflicting answers", sum(
            len(v) > 1 for v in answers.values()), 0)
        figures.equal("revoked agent's late request granted", sum(
            d.outcome == "granted" for d in late_d), 0)
        figures.equal("revoked agent's grants in Redis", sum(
            1 for _ in client.scan_iter(match=f"{keys.agent_prefix(revoked)}grant:*")), 0)
        figures.check("granted grants live in Redis after it all", len(_active(client)), "> 0",
                      bool(_active(client)))
    finally:
        decisions.close()
        grants.close()
        client.close()
    figures.verify()


VIEW_BOUND_S = 5.0
PROBE_S = 0.5  # the view's probe interval (GrantView's default, passed explicitly)
FREEZE = "payments:accounts.freeze"


def _view_checks(view: GrantView, agents: tuple[str, ...]) -> list[Verdict]:
    return [view.allows(a, FREEZE, "acct-1") for a in agents]


def _both(view: GrantView, exposure: Exposure, bystander: str) -> tuple[Verdict, Verdict]:
    """One check of the revoked agent (through ``exposure``) and one of the bystander."""
    return exposure.check(view), view.allows(bystander, FREEZE, "acct-1")


@pytest.mark.criterion("4")
def test_redis_killed_resource_view_denies_while_a_revocation_waits_then_recovers(
    private_stack: Private, agents: Callable[[str], str], figures: Figures,
) -> None:
    """Resource side: Redis down and a revocation pending, the revoked agent is allowed for at
    most the staleness bound plus one probe interval; every check after the view applied the
    revocation denies it; the bystander is allowed again once Redis is back."""
    settings, _worker = private_stack
    publisher = private.publisher(settings, "/tests/view-redis-kill")
    grants = Tap(role_access(settings, topics.ADMIN), topics.GRANTS.name)
    holder, bystander = agents("b"), agents("b")
    both = (holder, bystander)
    private.register(settings, both)
    exposure = Exposure(holder, FREEZE, "acct-1")
    try:
        publisher.publish_many(topics.ESCALATIONS.name, [fraud_request(a) for a in both])
        grants.wait_for(GrantIssued, lambda g: g.agent_id in both, count=2)
        with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings),
                       staleness_bound_s=VIEW_BOUND_S, probe_interval_s=PROBE_S,
                       revocations_group=settings.app_id, on_event=exposure.on_event) as view:
            assert view.wait_ready(60)
            wait_until(lambda: all(v.allowed for v in _view_checks(view, both)), 60,
                       "both agents allowed by the view before the fault")
            private.kill("redis")
            publisher.publish(topics.RISK.name, anomaly(holder))
            exposure.sent()
            to_deny = _until_all_denied(view, exposure, bystander)
            made, allowed, unavailable = _while_down(view, exposure, bystander, 3.0)
            private.restart()
            back, holder_allowed = _until_bystander_allowed(view, exposure, bystander)
            _after_applied(view, exposure, 1.0)
            state = _holder_state(view, holder)
        figures.at_most("revoked agent allowed after its revocation was sent (s)",
                        round(exposure.window_s(), 2), VIEW_BOUND_S + PROBE_S)
        figures.check("time from the pending revocation to every check denied (s)",
                      round(to_deny, 2), "reported", True)
        figures.at_least("view checks while Redis was down", made, 1)
        figures.equal("of them allowed", allowed, 0)
        figures.equal("of them marked unavailable (503, retry)", unavailable, made)
        figures.check("bystander allowed again after the restart", str(back), "True", back)
        figures.equal("revoked agent allowed after the view first denied it", holder_allowed, 0)
        figures.at_least("checks of the revoked agent after the view applied its revocation",
                         exposure.after_applied, 1)
        figures.equal("of them allowed", exposure.allowed_after_applied, 0)
        figures.check("revoked agent's grant state after recovery", state, "ended",
                      state == "ended")
    finally:
        grants.close()
    figures.verify()


def _while_down(view: GrantView, exposure: Exposure, bystander: str,
                seconds: float) -> tuple[int, int, int]:
    """Checks while Redis is still down: (made, allowed, marked unavailable)."""
    made, allowed, unavailable = 0, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for v in _both(view, exposure, bystander):
            made, allowed, unavailable = made + 1, allowed + v.allowed, unavailable + v.unavailable
    return made, allowed, unavailable


def _after_applied(view: GrantView, exposure: Exposure, seconds: float) -> None:
    """Check the revoked agent until the view applied its revocation, then ``seconds`` more."""

    def applied() -> bool:
        exposure.check(view)
        return exposure.applied_at is not None

    wait_until(applied, 120, "the view applied the revocation")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        exposure.check(view)


def _until_all_denied(view: GrantView, exposure: Exposure, bystander: str) -> float:
    """Check both agents until both are denied (60 s at most); seconds since the signal."""
    assert exposure.sent_at is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not any(v.allowed for v in _both(view, exposure, bystander)):
            return time.monotonic() - exposure.sent_at
    raise AssertionError("the view still allowed an agent 60 s after the revocation was sent")


def _until_bystander_allowed(view: GrantView, exposure: Exposure,
                             bystander: str) -> tuple[bool, int]:
    """Check both until the bystander is allowed again (or 180 s); count the holder's allows."""
    holder_allowed = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        held, other = _both(view, exposure, bystander)
        holder_allowed += held.allowed
        if other.allowed:
            return True, holder_allowed + exposure.check(view).allowed
        time.sleep(0.05)  # polling the view's in-memory state; the deadline bounds it
    return False, holder_allowed


def _holder_state(view: GrantView, holder: str) -> str:
    states = {view.grant_state(holder, g.grant_id) for g in view.active(holder)}
    return "ended" if not states and not view.active(holder) else ",".join(sorted(states))
