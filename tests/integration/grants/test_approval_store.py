"""The Redis approval store on real Redis: held once, each approver counted once, deny wins,
expiry only after the window, every key with an absolute expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.approvals import ApprovalStore
from broker.adapters.redis.store import RateLimit, RedisGrantStore
from broker.config import Settings
from broker.grants.decide import Pending, hold
from broker.policy import RiskContext, load_policy
from schemas.events import EscalationRequested
from tests.support.services import unique

pytestmark = pytest.mark.integration
BUNDLE = Path(__file__).resolve().parents[3] / "policies" / "graduated"


def held(agent: str, received_at: datetime) -> Pending:
    policy = load_policy(BUNDLE)
    profile = policy.agent("fraud-detector-7")
    assert profile is not None
    request = EscalationRequested(
        request_id=unique("req"), agent_id="fraud-detector-7",
        scopes=("payments:accounts.freeze",), resources=("acct-1",), duration_s=300,
        reason="pattern", confidence=0.85, risk_score=0.9, requested_at=received_at)
    evaluation = policy.evaluate(request, profile, RiskContext(), received_at)
    pending, _audit = hold(request, evaluation, received_at=received_at, now=received_at,
                           inputs={})
    # the same held request under a fresh agent id, so runs never collide
    return Pending(pending.event.model_copy(update={"agent_id": agent}),
                   request.model_copy(update={"agent_id": agent}), received_at,
                   pending.clamped_by, pending.denied)


async def test_votes_count_once_and_a_deny_wins(settings: Settings, rclient: redis.Redis) -> None:
    """Open is idempotent; a repeated approver is a duplicate; quorum 2 approves; late = closed."""
    grants = RedisGrantStore.from_url(settings.redis_url)
    store = ApprovalStore(grants.client)
    now = datetime.now(UTC)
    pending = held(unique("appr"), now)
    agent, request = pending.event.agent_id, pending.event.request_id
    try:
        assert (await store.open(pending, 900))[0] == "opened"
        assert (await store.open(pending, 900))[0] == "existing"  # a redelivered request
        vote = {"verdict": "approve", "at": now + timedelta(seconds=1), "quorum": 2}
        assert await store.vote(agent, request, approver="verifier-1", vote_id="v1",
                                **vote) == ("counted", "pending")  # type: ignore[arg-type]
        assert await store.vote(agent, request, approver="verifier-1", vote_id="v1b",
                                **vote) == ("duplicate", "pending")  # type: ignore[arg-type]
        assert await store.vote(agent, request, approver="verifier-2", vote_id="v2",
                                **vote) == ("counted", "approved")  # type: ignore[arg-type]
        assert await store.vote(agent, request, approver="operator:oncall", vote_id="v3",
                                verdict="deny", at=now, quorum=2) == ("closed", "approved")
        found = await store.get(agent, request)
        assert found is not None
        resolution = found.resolution()
        assert resolution is not None and resolution.status == "approved"
        assert set(resolution.approvers) == {"verifier-1", "verifier-2"}
        assert resolution.decided_at == (now + timedelta(seconds=1)).replace(
            microsecond=(now + timedelta(seconds=1)).microsecond // 1000 * 1000)
        assert rclient.pttl(keys.approval(agent, request)) > 0
        assert rclient.pttl(keys.APPROVALS_DUE) > 0
    finally:
        await grants.aclose()


async def test_deny_wins_and_expiry_waits_for_the_window(settings: Settings) -> None:
    """One deny closes it even after an approval; an unanswered one expires only past its end."""
    grants = RedisGrantStore.from_url(settings.redis_url)
    store = ApprovalStore(grants.client)
    now = datetime.now(UTC)
    denied, unanswered = held(unique("appr"), now), held(unique("appr"), now)
    try:
        for p in (denied, unanswered):
            await store.open(p, 900)
        a, r = denied.event.agent_id, denied.event.request_id
        await store.vote(a, r, approver="verifier-1", verdict="approve", at=now, vote_id="x",
                         quorum=2)
        assert await store.vote(a, r, approver="verifier-2", verdict="deny", at=now,
                                vote_id="y", quorum=2) == ("counted", "denied")
        a, r = unanswered.event.agent_id, unanswered.event.request_id
        end = unanswered.event.window_expires_at
        assert await store.expire(a, r, end - timedelta(milliseconds=1)) == "pending"
        assert await store.vote(a, r, approver="verifier-1", verdict="approve", at=end,
                                vote_id="z", quorum=2) == ("late", "pending")
        assert await store.expire(a, r, end) == "expired"
        found = await store.get(a, r)
        assert found is not None and found.resolution() is not None
        assert found.decided_at == end.replace(microsecond=end.microsecond // 1000 * 1000)
        due = await store.due(end)
        assert (a, r) in due
        await store.forget_due(a, r)
        assert (a, r) not in await store.due(end)
    finally:
        await grants.aclose()


async def test_holding_takes_a_token_of_the_agents_rate_limit(settings: Settings) -> None:
    """A held request counts against the rate limit: with 1 per minute, a second is refused."""
    grants = RedisGrantStore.from_url(settings.redis_url)
    store = ApprovalStore(grants.client)
    now, agent = datetime.now(UTC), unique("appr")
    first, second = held(agent, now), held(agent, now)
    limit = RateLimit(capacity=1, per_ms=60_000)
    try:
        assert (await store.open(first, 900, rate=limit, now=now))[0] == "opened"
        assert (await store.open(second, 900, rate=limit, now=now))[0] == "rate"
        assert await store.get(agent, second.event.request_id) is None
        assert (await store.open(first, 900, rate=limit, now=now))[0] == "existing"
    finally:
        await grants.aclose()
