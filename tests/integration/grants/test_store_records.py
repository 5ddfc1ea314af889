"""The grant store's compact decision record and its one-round-trip commit, on real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import records
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.grants.decide import AgentState, decide
from broker.policy import RiskContext, load_policy
from broker.stack.worker import WorkerProcess
from schemas.events import EscalationRequested

pytestmark = pytest.mark.integration


async def test_commit_survives_a_script_flush_and_is_flagged_published_in_place(
    worker: WorkerProcess, settings: Settings, rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """After SCRIPT FLUSH the commit still lands (loaded again, once); the record is compact,
    expires absolutely, is found again by a redelivery's snapshot, and mark_published flips its
    flag without touching its PXAT or creating the legacy marker key."""
    policy = load_policy(settings.policy_path)
    agent = agents("f")  # a fresh fraud agent; the worker has built the view
    profile = policy.agent(agent)
    assert profile is not None
    request = EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=("payments:accounts.freeze",),
        resources=("acct-1",), duration_s=900, reason="t", confidence=0.99, risk_score=0.93,
        requested_at=datetime.now(UTC))
    store = RedisGrantStore.from_url(settings.redis_url)
    try:
        now = await store.now()
        evaluation = policy.evaluate(request, profile, RiskContext(request=0.93), now)
        outcome = decide(request, evaluation, agent=profile, state=AgentState(),
                         received_at=now, now=now)
        rclient.script_flush()
        committed = await store.commit(outcome, received_at=now, now=now,
                                       max_grant_s=policy.max_grant_duration_s)
        assert committed.status == "stored" and committed.decision == outcome.decision
        key = keys.decision(agent, request.request_id)
        raw = rclient.get(key)
        assert raw is not None and raw[:1] == records.UNPUBLISHED
        assert len(raw) < len(outcome.decision.model_dump_json())
        pxat = rclient.pexpiretime(key)
        assert pxat > 0
        snap = await store.snapshot(agent, request_id=request.request_id)
        assert snap.recorded is not None and snap.recorded.decision == outcome.decision
        assert snap.recorded.published is False
        await store.mark_published(outcome.decision, received_at=now,
                                   max_grant_s=policy.max_grant_duration_s)
        assert rclient.pexpiretime(key) == pxat
        assert rclient.exists(keys.published(agent, request.request_id)) == 0
        again = await store.recorded(agent, request.request_id)
        assert again is not None and again.published and again.decision == outcome.decision
    finally:
        await store.aclose()


async def test_mark_published_creates_nothing_for_a_missing_record(
    settings: Settings, rclient: redis.Redis
) -> None:
    """No record, no key: marking never creates a key (that would lack a TTL)."""
    policy = load_policy(settings.policy_path)
    profile = policy.agents()[0]
    request = EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=profile.agent_id,
        scopes=("payments:accounts.freeze",), resources=(), duration_s=60, reason="t",
        confidence=0.1, risk_score=0.1, requested_at=datetime.now(UTC))
    store = RedisGrantStore.from_url(settings.redis_url)
    try:
        now = await store.now()
        evaluation = policy.evaluate(request, profile, RiskContext(request=0.1), now)
        outcome = decide(request, evaluation, agent=profile, state=AgentState(),
                         received_at=now, now=now)
        await store.mark_published(outcome.decision, received_at=now,
                                   max_grant_s=policy.max_grant_duration_s)
        assert rclient.exists(keys.decision(profile.agent_id, request.request_id)) == 0
        assert rclient.exists(keys.published(profile.agent_id, request.request_id)) == 0
    finally:
        await store.aclose()
