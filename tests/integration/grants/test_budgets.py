"""Usage budgets on a real Kafka and Redis: exactly N uses, then the grant is revoked with why."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import redis

from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import lua
from broker.adapters.redis.budgets import BudgetCounter
from broker.adapters.redis.store import ms
from broker.config import Settings
from broker.grants.budgets import BUDGET_RULE
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.budgets import BudgetMeter
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord, GrantIssued, GrantRevoked, GrantUsed
from tests.support.enforcement import FREEZE
from tests.support.identities import agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
PAYMENTS = topics.GRANTS_PAYMENTS.name
REASON = "budget exhausted: 3 of 3 payments:accounts.freeze used"


def _budgeted_grant(client: AgentClient) -> str:
    decision = client.request_escalation(
        [FREEZE], resources=["acct-1"], duration_s=300, reason="fraud ring", confidence=0.95)
    assert decision.outcome == "granted", decision.reasons
    assert decision.grant_id is not None
    return decision.grant_id


def _race(meter: BudgetMeter, agent: str, use_ids: list[str]) -> dict[str, Verdict]:
    """Every use at once, from as many threads, released together."""
    start, results = threading.Barrier(len(use_ids)), {}

    def one(use_id: str) -> None:
        start.wait()
        results[use_id] = meter.use(agent, FREEZE, "acct-1", use_id=use_id)

    threads = [threading.Thread(target=one, args=(u,)) for u in use_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_a_budget_of_three_freezes_allows_exactly_three_then_revokes_the_grant(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    tap: TapFactory, rclient: redis.Redis,
) -> None:
    """8 racing uses: 3 pass, 5 are refused; a retried use id is not counted twice; Redis down
    refuses (fail closed); the worker revokes the grant once, with the reason, and audits it."""
    service, agent = role_access(settings, topics.SERVICE), agents("b")
    grants, audit = tap(topics.GRANTS.name), tap(topics.AUDIT_RAW.name)
    with GrantView(service, topic=PAYMENTS) as view, agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        grant_id = _budgeted_grant(client)
        issued = grants.wait_for(GrantIssued, lambda g: g.grant_id == grant_id)[0]
        assert issued.budgets == {FREEZE: 3}
        pub = Publisher(service, source="/tests/payments-api")
        dead = BudgetMeter(view, BudgetCounter.from_url("redis://127.0.0.1:1", timeout_s=0.5),
                           pub, service="payments-api")
        meter = BudgetMeter(view, BudgetCounter(redis.Redis.from_url(settings.redis_url)), pub,
                            service="payments-api")
        wait_until(lambda: view.allows(agent, FREEZE, "acct-1").allowed, 30, "grant in view")
        down = dead.use(agent, FREEZE, "acct-1", use_id="use-while-redis-is-down")
        assert not down.allowed and down.unavailable and "fail closed" in down.reason
        results = _race(meter, agent, [f"use-{n}" for n in range(8)])
        passed = sorted(u for u, v in results.items() if v.allowed)
        assert len(passed) == 3, {u: v.reason for u, v in results.items()}
        refused = [v for v in results.values() if not v.allowed]
        assert all(REASON in v.reason or "no active grant" in v.reason
                   or "no longer in the grant store" in v.reason for v in refused)
        meter.use(agent, FREEZE, "acct-1", use_id=passed[0])  # a retried report of a counted use
        counters = rclient.hgetall(keys.budget(agent, grant_id))
        assert counters[f"used:{FREEZE}".encode()] == b"3"
        assert rclient.pexpiretime(keys.budget(agent, grant_id)) == ms(issued.expires_at)
        revoked = grants.wait_for(GrantRevoked, lambda r: r.grant_id == grant_id, timeout=60)[0]
        assert revoked.reason == REASON and revoked.rule == BUDGET_RULE
        after = meter.use(agent, FREEZE, "acct-1", use_id="after-revocation")
        assert not after.allowed
        # A redelivered report of the last use, then a sentinel behind it (same partition).
        last = next(u for u in passed if results[u].reason.startswith("use 3 of 3"))
        _republish_and_wait(pub, audit, agent, grant_id, last)
        meter.close()
        dead.close()
    assert len(grants.events(GrantRevoked, lambda r: r.grant_id == grant_id)) == 1
    uses = audit.events(AuditRecord, lambda a: a.kind == "grant.used" and a.subject_id == grant_id)
    assert sum(1 for a in {u.audit_id: u for u in uses}.values() if a.outcome == "consumed") == 3
    ended = audit.events(AuditRecord, lambda a: a.kind == "grant.revoked"
                         and a.subject_id == grant_id)
    assert ended and ended[0].reasons == (REASON,)


def _republish_and_wait(pub: Publisher, audit: Tap, agent: str, grant_id: str,
                        last: str) -> None:
    """Send the report of use 3 again and a refused report after it; wait for the latter."""
    now = datetime.now(UTC)
    again = GrantUsed(use_id=last, agent_id=agent, grant_id=grant_id, scope=FREEZE,
                      resource="acct-1", service="payments-api", outcome="consumed", used=3,
                      limit=3, used_at=now)
    sentinel = GrantUsed(use_id=f"sentinel-{uuid.uuid4().hex[:8]}", agent_id=agent,
                         grant_id=grant_id, scope=FREEZE, service="payments-api",
                         outcome="refused", used=3, limit=3, used_at=now + timedelta(seconds=1))
    pub.publish_many(topics.USAGE.name, [again, sentinel])
    audit.wait_for(AuditRecord, lambda a: a.kind == "grant.used"
                   and sentinel.use_id in str(a.inputs.get("use")), timeout=60)


def test_budget_counter_is_atomic_idempotent_and_ends_with_its_grant(
    settings: Settings, rclient: redis.Redis,
) -> None:
    """The Lua counter alone: counts to the limit, refuses after, ignores a retried use id,
    carries the grant's absolute expiry, and refuses once the grant key is gone."""
    agent, gid = f"budget-unit-{uuid.uuid4().hex[:8]}", "grant-budget-1"
    now = datetime.now(UTC)
    grant = GrantIssued(grant_id=gid, agent_id=agent, request_id="req-1", scopes=(FREEZE,),
                        resources=("acct-9",), issued_at=now,
                        expires_at=now + timedelta(seconds=60),
                        policy_revision="r", rules=("x",), budgets={FREEZE: 2})
    rclient.set(keys.grant(agent, gid), grant.model_dump_json(), pxat=ms(grant.expires_at))
    counter = BudgetCounter(redis.Redis.from_url(settings.redis_url))
    try:
        first = counter.consume(grant, FREEZE, "u1")
        assert (first.status, first.used, first.limit) == ("ok", 1, 2)
        assert counter.consume(grant, FREEZE, "u1").status == "dup"
        assert counter.consume(grant, FREEZE, "u2").used == 2
        third = counter.consume(grant, FREEZE, "u3")
        assert (third.status, third.counted) == ("exhausted", False)
        assert counter.consume(grant, "crm:customer.pii.read", "u4").status == "unlimited"
        assert rclient.pexpiretime(keys.budget(agent, gid)) == ms(grant.expires_at)
        rclient.delete(keys.grant(agent, gid))
        assert counter.consume(grant, FREEZE, "u5").status == "gone"
    finally:
        rclient.delete(keys.grant(agent, gid), keys.budget(agent, gid))
        counter.close()


def test_a_renewal_moves_the_budget_counters_expiry_with_the_grant(
    settings: Settings, rclient: redis.Redis,
) -> None:
    """RENEW sets the budget hash's PEXPIREAT to the grant's new expiry (never shortens it)."""
    agent, gid = f"budget-renew-{uuid.uuid4().hex[:8]}", "grant-budget-2"
    now = datetime.now(UTC)
    old, new = now + timedelta(seconds=30), now + timedelta(seconds=90)
    grant = GrantIssued(grant_id=gid, agent_id=agent, request_id="req-2", scopes=(FREEZE,),
                        resources=("acct-9",), issued_at=now, expires_at=old,
                        policy_revision="r", rules=("x",), budgets={FREEZE: 2})
    rclient.set(keys.grant(agent, gid), grant.model_dump_json(), pxat=ms(old))
    rclient.set(keys.life(agent, gid), ms(old), pxat=ms(old) + 60_000)
    counter = BudgetCounter(redis.Redis.from_url(settings.redis_url))
    renew = rclient.register_script(lua.RENEW)
    renewed = grant.model_copy(update={"expires_at": new})
    try:
        assert counter.consume(grant, FREEZE, "u1").status == "ok"
        assert rclient.pexpiretime(keys.budget(agent, gid)) == ms(old)
        status = renew(keys=[keys.renewal(agent, "rn-1"), keys.grant(agent, gid),
                             keys.index(agent), keys.life(agent, gid), keys.revoked(agent),
                             keys.quarantine(agent), keys.budget(agent, gid)],
                       args=["{}", renewed.model_dump_json(), ms(new), ms(now), ms(now),
                             ms(new) + 60_000, gid, ms(new) + 60_000, ms(old)])
        assert status[0] == b"stored"
        assert rclient.pexpiretime(keys.budget(agent, gid)) == ms(new)
        assert counter.consume(renewed, FREEZE, "u2").used == 2  # the count carried over
    finally:
        rclient.delete(*(k(agent, gid) for k in (keys.grant, keys.life, keys.budget)),
                       keys.index(agent), keys.renewal(agent, "rn-1"))
        counter.close()
