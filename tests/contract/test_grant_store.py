"""The grant store contract: the same cases against the in-memory twin and against real Redis.

The twin (tests/support/twins.py) is what the worker's unit tests run on; these cases hold it to
``RedisGrantStore``: absolute expiry, one commit per decision id, fencing epochs, revocation
markers, the rate limit, the view epoch, live risk and the expiry index. The Redis arm uses a
database of its own, flushed before each case (never the one the test worker uses).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from broker.adapters.ports import Fence, GrantStore, RateLimit
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import RedisGrantStore
from schemas import topics
from tests.support.factories import (
    AGENT,
    MARGIN_S,
    POLICY,
    built,
    commit,
    outcome,
    revocation,
)
from tests.support.services import Services
from tests.support.twins import MemoryGrantStore, ms

CONTRACT_DB = 5  # the Redis arm's own database
FENCE_KEY = keys.fence(topics.ESCALATIONS.name, 0)


@pytest.fixture(params=["twin", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[GrantStore]:
    """The in-memory twin, or the Redis store on a flushed database of its own."""
    if request.param == "twin":
        yield MemoryGrantStore(margin_s=MARGIN_S)
        return
    services: Services = request.getfixturevalue("services")
    url = urlunsplit(urlsplit(services.redis_url)._replace(path=f"/{CONTRACT_DB}"))
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    real = RedisGrantStore.from_url(url, margin_s=MARGIN_S)
    try:
        yield real
    finally:
        await real.aclose()


async def test_nothing_is_decided_before_the_view_is_built(store: GrantStore) -> None:
    """No view epoch: the snapshot says so and a commit is blocked ``view``; once marked, the
    epoch is the instant given (to the millisecond)."""
    now = await store.now()
    assert await store.view_epoch() is None
    assert (await store.snapshot(AGENT)).view_built is False
    blocked = await commit(store, outcome(now), now)
    assert (blocked.status, blocked.blocked_reason, blocked.decision) == ("blocked", "view", None)
    await store.mark_built(now)
    epoch = await store.view_epoch()
    assert epoch is not None and ms(epoch) == ms(now)
    assert (await store.snapshot(AGENT)).view_built is True


async def test_a_decision_is_committed_once_and_its_expiry_never_moves(store: GrantStore) -> None:
    """The first commit stores decision and grant; a redelivery (decided again later) gets the
    recorded decision and grant back, unpublished until marked; the grant ends at its absolute
    expiry."""
    now = await built(store)
    first = outcome(now)
    stored = await commit(store, first, now)
    assert (stored.status, stored.decision, stored.grant) == ("stored", first.decision,
                                                               first.grant)
    grant = first.grant
    assert grant is not None and grant.expires_at == now + timedelta(seconds=20)
    later = now + timedelta(seconds=5)
    again = await commit(store, outcome(now, later, request_id=first.decision.request_id), later,
                         received_at=now)
    assert (again.status, again.decision, again.grant) == ("existing", first.decision, grant)
    assert again.published is False
    assert await store.recorded(AGENT, first.decision.request_id) == again
    snap = await store.snapshot(AGENT, request_id=first.decision.request_id)
    assert snap.recorded == again
    await store.mark_published(first.decision, received_at=now,
                               max_grant_s=POLICY.max_grant_duration_s)
    marked = await store.recorded(AGENT, first.decision.request_id)
    assert marked is not None and marked.published is True and marked.decision == first.decision
    assert await store.active_grants(AGENT, grant.expires_at - timedelta(milliseconds=1)) == [
        grant]
    assert await store.active_grants(AGENT, grant.expires_at) == []


async def test_a_denial_is_recorded_without_a_grant(store: GrantStore) -> None:
    """A denial is stored (its redelivery finds it) and leaves no grant."""
    now = await built(store)
    denial = outcome(now, denied=True)
    stored = await commit(store, denial, now)
    assert (stored.status, stored.grant) == ("stored", None)
    found = await store.recorded(AGENT, denial.decision.request_id)
    assert found is not None and found.decision == denial.decision and found.grant is None
    assert await store.active_grants(AGENT, now) == []


async def test_a_stale_owner_is_fenced(store: GrantStore) -> None:
    """Claims grow; a commit or revocation carrying an older epoch than the agent's newest
    writer is refused (naming the newer epoch) and writes nothing."""
    now = await built(store)
    assert await store.fence_epoch(FENCE_KEY) == 0
    assert (await store.snapshot(AGENT, FENCE_KEY)).fence_epoch == 0
    old = await store.claim(FENCE_KEY)
    new = await store.claim(FENCE_KEY)
    assert new > old and await store.fence_epoch(FENCE_KEY) == new
    assert (await store.snapshot(AGENT, FENCE_KEY)).fence_epoch == new
    assert (await commit(store, outcome(now), now, fence=Fence("esc", new))).status == "stored"
    stale = outcome(now)
    fenced = await commit(store, stale, now, fence=Fence("esc", old))
    assert (fenced.status, fenced.blocked_reason, fenced.decision) == ("fenced", str(new), None)
    assert await store.recorded(AGENT, stale.decision.request_id) is None
    assert await store.revoke_all(revocation(now), Fence("esc", old)) is None
    assert len(await store.active_grants(AGENT, now)) == 1


async def test_a_commit_is_fenced_once_a_newer_owner_claimed_the_partition(
        store: GrantStore) -> None:
    """With the partition's key, a commit is refused as soon as a newer owner claimed the
    partition, before that owner wrote anything for the agent; our own claim's commit passes."""
    now = await built(store)
    old = await store.claim(FENCE_KEY)
    first = outcome(now)
    ours = await commit(store, first, now, fence=Fence("esc", old, FENCE_KEY))
    assert ours.status == "stored"
    new = await store.claim(FENCE_KEY)  # the new owner has written nothing for the agent yet
    late = outcome(now)
    fenced = await commit(store, late, now, fence=Fence("esc", old, FENCE_KEY))
    assert (fenced.status, fenced.blocked_reason, fenced.decision) == ("fenced", str(new), None)
    assert await store.recorded(AGENT, late.decision.request_id) is None
    # Without the partition's key only the agent's last writer fences: it is still ``old``.
    assert (await commit(store, outcome(now), now, fence=Fence("esc", old))).status == "stored"
    assert (await commit(store, late, now, fence=Fence("esc", new, FENCE_KEY))).status == "stored"


async def test_a_revocation_is_fenced_once_a_newer_owner_claimed_the_signal_s_partition(
        store: GrantStore) -> None:
    """With the risk partition's key, a revocation is refused (None, nothing removed) as soon
    as a newer owner claimed the partition; with the new owner's epoch it goes ahead."""
    risk_key = keys.fence(topics.RISK.name, 0)
    now = await built(store)
    granted = outcome(now)
    await commit(store, granted, now)
    old = await store.claim(risk_key)
    new = await store.claim(risk_key)  # the new owner has written nothing for the agent yet
    plan = revocation(now + timedelta(seconds=1))
    assert await store.revoke_all(plan, Fence("risk", old, risk_key)) is None
    assert await store.active_grants(AGENT, now) == [granted.grant]
    assert await store.revoke_all(plan, Fence("risk", new, risk_key)) == (granted.grant,)
    assert await store.active_grants(AGENT, now) == []


async def test_a_revocation_removes_grants_and_denies_what_came_before(
    store: GrantStore,
) -> None:
    """Revoke-all removes live grants, records them under its cause (a redelivery gets the same
    ones back), and its marker blocks a grant for any request received up to the revocation."""
    now = await built(store)
    granted = outcome(now)
    await commit(store, granted, now)
    revoked_at = now + timedelta(seconds=1)
    plan = revocation(revoked_at)
    assert await store.revoke_all(plan) == (granted.grant,)
    assert await store.active_grants(AGENT, now) == []
    assert await store.revoke_all(plan) == (granted.grant,)
    state = (await store.snapshot(AGENT)).state
    assert state.revoked_at is not None and ms(state.revoked_at) == ms(revoked_at)
    assert state.quarantined_until is None
    before = await commit(store, outcome(revoked_at), revoked_at)
    assert (before.status, before.blocked_reason, before.blocked_detail) == (
        "blocked", "revoked", str(ms(revoked_at)))
    after = revoked_at + timedelta(milliseconds=1)
    assert (await commit(store, outcome(after), after)).status == "stored"


async def test_a_quarantine_blocks_grants_until_it_ends(store: GrantStore) -> None:
    """A revocation with a quarantine leaves it (with its rule) until its absolute end, and
    requests received before that end stay denied."""
    now = await built(store)
    plan = revocation(now, quarantine_s=60)
    assert await store.revoke_all(plan) == ()
    state = await store.agent_state(AGENT)
    assert plan.quarantine_until is not None
    assert state.quarantined_until is not None
    assert ms(state.quarantined_until) == ms(plan.quarantine_until)
    assert state.quarantine_rule == "test-revoke"
    assert state.revoked_at is not None and ms(state.revoked_at) == ms(plan.quarantine_until)
    blocked = await commit(store, outcome(now), now)
    assert (blocked.blocked_reason, blocked.blocked_detail) == ("quarantine", "test-revoke")


async def test_a_grant_that_would_already_have_expired_is_stale(store: GrantStore) -> None:
    """Committed after its absolute expiry, a grant is blocked ``stale`` (naming that expiry)."""
    now = await built(store)
    late = outcome(now - timedelta(minutes=1))
    assert late.grant is not None
    blocked = await commit(store, late, now, received_at=now - timedelta(minutes=1))
    assert (blocked.status, blocked.blocked_reason, blocked.blocked_detail) == (
        "blocked", "stale", str(ms(late.grant.expires_at)))


async def test_the_rate_limit_takes_a_token_per_decision(store: GrantStore) -> None:
    """One request a minute: the first decision takes the token, the next is blocked ``rate``
    with the milliseconds until a token frees up; a blocked attempt takes none."""
    now = await built(store)
    rate = RateLimit(1, 60_000)
    assert (await commit(store, outcome(now), now, rate=rate)).status == "stored"
    blocked = await commit(store, outcome(now, denied=True), now, rate=rate)
    assert (blocked.status, blocked.blocked_reason) == ("blocked", "rate")
    assert 0 < int(blocked.blocked_detail) <= 60_000
    later = now + timedelta(seconds=61)
    assert (await commit(store, outcome(later), later, rate=rate)).status == "stored"


async def test_live_risk_keeps_the_highest_severity_until_its_end(store: GrantStore) -> None:
    """Live risk is the highest severity noted and not yet ended; one already over is none."""
    now = await built(store)
    until = now + timedelta(minutes=10)
    assert await store.note_risk(AGENT, 0.5, until) == 0.5
    assert await store.note_risk(AGENT, 0.3, until) == 0.5
    assert await store.note_risk(AGENT, 0.9, until) == 0.9
    assert await store.live_risk(AGENT) == 0.9
    assert (await store.snapshot(AGENT)).risk == 0.9
    assert await store.note_risk("fraud-detector-8", 0.7, now - timedelta(seconds=1)) == 0.0


async def test_expiries_come_due_at_the_absolute_expiry_and_are_acknowledged(
    store: GrantStore,
) -> None:
    """A live grant's expiry is due at its ``expires_at`` (routed to its namespaces) and not
    before; a revoked grant's entry is due, not live, once its time (its warning's) came; once
    acknowledged, they are gone."""
    now = await built(store)
    kept, revoked = outcome(now), outcome(now)
    await commit(store, revoked, now)
    await store.revoke_all(revocation(now + timedelta(seconds=1)))
    await commit(store, kept, now + timedelta(seconds=2))
    assert kept.grant is not None and revoked.grant is not None
    expiry = kept.grant.expires_at
    early = await store.due_expiries(expiry - timedelta(milliseconds=1))
    assert [(d.event.grant_id, d.live, d.namespaces) for d in early] == [
        (revoked.grant.grant_id, False, ("payments",))]
    await store.ack_expiries(early)
    due = await store.due_expiries(expiry)
    assert [(d.event.grant_id, d.live, d.namespaces) for d in due] == [
        (kept.grant.grant_id, True, ("payments",))]
    assert ms(due[0].event.expires_at) == ms(expiry)
    await store.ack_expiries(due)
    assert await store.due_expiries(expiry + timedelta(hours=1)) == []


async def test_an_unrevoked_expiry_is_live(store: GrantStore) -> None:
    """An expiry no revocation or release ended is announced (``live``)."""
    now = await built(store)
    granted = outcome(now)
    await commit(store, granted, now)
    assert granted.grant is not None
    due = await store.due_expiries(granted.grant.expires_at)
    assert [(d.event.grant_id, d.live) for d in due] == [(granted.grant.grant_id, True)]
