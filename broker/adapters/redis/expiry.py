"""The grant store's expiry indexes: when each grant expires and when to warn of it.

Imports redis, broker (redis adapters), schemas. Part of ``RedisGrantStore`` (a base class of
it): a grant is indexed before it is stored, so no expiry is ever missed, and announced once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import call
from broker.adapters.redis.values import DueExpiry, from_ms, ms
from schemas.events import GrantExpired, GrantIssued


class ExpiryIndex:
    """Index, list and acknowledge grant expiries and expiry warnings."""

    _r: aioredis.Redis
    _warn_before: float

    def warn_at(self, grant: GrantIssued) -> datetime:
        """When to announce grant.expiring: ``warn_before_s`` ahead, at most half its life."""
        life = (grant.expires_at - grant.issued_at).total_seconds()
        return grant.expires_at - timedelta(seconds=max(min(self._warn_before, life / 2), 0))

    async def schedule(self, grant: GrantIssued, life_until: datetime) -> None:
        """Index a grant's expiry and expiry warning (before it is stored: never missed)."""
        pipe = self._r.pipeline(transaction=False)  # one round trip for both indexes
        self._index_expiry(pipe, grant, life_until)
        await call(pipe.execute())

    def _index_expiry(self, pipe: Any, grant: GrantIssued, life_until: datetime) -> None:
        """Queue on ``pipe`` the expiry and expiry-warning index entries of a grant."""
        member = keys.expiry_member(grant.agent_id, grant.grant_id, grant.scopes)
        for index, when in (
            (keys.expiry_index(grant.agent_id), grant.expires_at),
            (keys.expiring_index(grant.agent_id), self.warn_at(grant)),
        ):
            pipe.zadd(index, {member: ms(when)})
            pipe.pexpireat(index, ms(life_until), gt=True)
            pipe.pexpireat(index, ms(life_until), nx=True)

    async def due_expiries(self, now: datetime, limit: int = 500) -> list[DueExpiry]:
        """Grants whose expiry passed; ``live`` says whether to announce (not revoked/released).

        Each shard of the index is read (up to ``limit`` in all). A grant renewed since it was
        indexed (its life key holds a later expiry) is re-scored instead: its end is announced
        at the new expiry.
        """
        pipe = self._r.pipeline(transaction=False)  # one round trip for every shard
        for index in keys.expiry_indexes():
            pipe.zrangebyscore(index, "-inf", ms(now), start=0, num=limit, withscores=True)
        shards = await call(pipe.execute())
        parsed = [(raw.decode(), score) for found in shards for raw, score in found][:limit]
        pipe = self._r.pipeline(transaction=False)  # one round trip for the whole batch
        for member, _score in parsed:
            agent, gid, _ns = keys.parse_member(member)
            pipe.get(keys.life(agent, gid))
        lives = await call(pipe.execute()) if parsed else []
        out = []
        for (member, score), current in zip(parsed, lives, strict=True):
            agent, gid, namespaces = keys.parse_member(member)
            if current is not None and int(current) > int(score):
                await call(self._r.zadd(keys.expiry_index(agent), {member: int(current)}))
                continue
            event = GrantExpired(grant_id=gid, agent_id=agent, expires_at=from_ms(score))
            out.append(DueExpiry(event, current is not None, namespaces, member))
        return out

    async def ack_expiries(self, done: Sequence[DueExpiry]) -> None:
        """Forget announced (or skipped) expiries."""
        if not done:
            return
        pipe = self._r.pipeline(transaction=False)
        for d in done:
            pipe.delete(keys.life(d.event.agent_id, d.event.grant_id))
            pipe.zrem(keys.expiry_index(d.event.agent_id), d.member)
        await call(pipe.execute())
