"""The delegation store's scripts on real Redis: a child is registered only while its parent
lives, a parent's end removes a child once (the same answer on a redelivery, never re-created),
and every key it writes expires."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.delegation import DelegationStore
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas.events import DelegationDecided, GrantIssued

pytestmark = pytest.mark.integration
FREEZE = "payments:accounts.freeze"


def _grant(agent: str, gid: str, now: datetime, parent: str | None = None) -> GrantIssued:
    return GrantIssued(grant_id=gid, agent_id=agent, request_id=f"req-{gid}", scopes=(FREEZE,),
                       resources=("acct-1",), issued_at=now, expires_at=now + timedelta(minutes=1),
                       policy_revision="r", rules=("x",), parent_grant_id=parent,
                       delegators=(("a-" + gid),) if parent else ())


def _decision(parent: GrantIssued, child: GrantIssued, now: datetime) -> DelegationDecided:
    return DelegationDecided(
        decision_id=f"delegation-{child.grant_id}", request_id=child.request_id,
        agent_id=parent.agent_id, delegate_id=child.agent_id, parent_grant_id=parent.grant_id,
        outcome="granted", grant_id=child.grant_id, granted_scopes=child.scopes,
        resources=child.resources, expires_at=child.expires_at, policy_revision="r",
        decided_at=now)


async def test_child_lifecycle_scripts(worker: WorkerProcess, settings: Settings,
                                       rclient: redis.Redis) -> None:
    """Record with a live parent registers the child; a redelivery gets the record back; the
    end of the parent removes the child once and blocks writing it again; a dead parent refuses
    the registration."""
    run = uuid.uuid4().hex[:8]
    grants = RedisGrantStore.from_url(settings.redis_url)
    store = DelegationStore(grants.client)
    try:
        now = await grants.now()
        a, b = f"dlg-a-{run}", f"dlg-b-{run}"
        parent, child = _grant(a, f"gp-{run}", now), _grant(b, f"gc-{run}", now, f"gp-{run}")
        rclient.set(keys.grant(a, parent.grant_id), parent.model_dump_json(), pxat=_ms(now, 60))
        rclient.set(keys.life(a, parent.grant_id), "1", pxat=_ms(now, 120))
        assert await store.commit_child(child, now, now + timedelta(minutes=2)) == "stored"
        status, _ = await store.record(_decision(parent, child, now), child,
                                       now + timedelta(minutes=2))
        assert status == "stored"
        assert await store.children(a, parent.grant_id) == [(b, child.grant_id)]
        again, found = await store.record(_decision(parent, child, now), child,
                                          now + timedelta(minutes=2))
        assert again == "existing" and found is not None and found.grant_id == child.grant_id
        first = await store.end_child(b, child.grant_id, now, now + timedelta(minutes=2))
        second = await store.end_child(b, child.grant_id, now + timedelta(seconds=5),
                                       now + timedelta(minutes=2))
        assert first[1] == child and second == first  # a redelivery repeats the same revocation
        assert not rclient.exists(keys.grant(b, child.grant_id))
        assert await store.commit_child(child, now, now + timedelta(minutes=2)) == "ended"
        assert await store.live_children(a, parent.grant_id) == []
        for key in (keys.children(a, parent.grant_id), keys.ended_child(b, child.grant_id),
                    keys.delegation(a, child.request_id)):
            assert rclient.pttl(key) > 0, key  # nothing without an absolute expiry
        rclient.delete(keys.life(a, parent.grant_id))  # the parent ends
        late = _grant(b, f"gl-{run}", now, parent.grant_id)
        dead, _ = await store.record(_decision(parent, late, now), late, now + timedelta(minutes=2))
        assert dead == "parent-ended"
    finally:
        await grants.aclose()


def _ms(now: datetime, seconds: int) -> int:
    return int((now + timedelta(seconds=seconds)).timestamp() * 1000)

