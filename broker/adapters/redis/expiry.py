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
    """Index, list and acknowledge grant expiries and expiry warnings.

    One index holds each grant once, scored by the next moment the sweeper has something to do
    for it: its warning time while its expiry warning is pending, its expiry once warned. The
    grant's life key holds its current expiry, so a member scored below it still awaits its
    warning (or was renewed since: it is re-scored), and one scored at or past it awaits its
    expiry. A grant that was revoked or released has no life key: its member is moot.
    """

    _r: aioredis.Redis
    _warn_before: float

    def warn_at(self, grant: GrantIssued) -> datetime:
        """When to announce grant.expiring: ``warn_before_s`` ahead, at most half its life."""
        life = (grant.expires_at - grant.issued_at).total_seconds()
        return grant.expires_at - timedelta(seconds=max(min(self._warn_before, life / 2), 0))

    async def schedule(self, grant: GrantIssued, life_until: datetime) -> None:
        """Index a grant's expiry warning and expiry (before it is stored: never missed)."""
        pipe = self._r.pipeline(transaction=False)
        self._index_expiry(pipe, grant, life_until)
        await call(pipe.execute())

    def _index_expiry(self, pipe: Any, grant: GrantIssued, life_until: datetime) -> None:
        """Queue on ``pipe`` the index entry of a grant, scored by its warning time."""
        index = keys.expiry_index(grant.agent_id)
        member = keys.expiry_member(grant.agent_id, grant.grant_id, grant.scopes)
        pipe.zadd(index, {member: ms(self.warn_at(grant))})
        pipe.pexpireat(index, ms(life_until), gt=True)
        pipe.pexpireat(index, ms(life_until), nx=True)

    async def due_members(self, now: datetime, limit: int, indexes: Sequence[str] = ()
                          ) -> list[tuple[str, int, bytes | None]]:
        """(member, score, life) of up to ``limit`` members due by ``now``, in two round trips
        (every shard, then every member's life key); life None once the grant has ended."""
        pipe = self._r.pipeline(transaction=False)
        for index in indexes or keys.expiry_indexes():
            pipe.zrangebyscore(index, "-inf", ms(now), start=0, num=limit, withscores=True)
        shards = await call(pipe.execute())
        parsed = [(raw.decode(), int(score)) for found in shards for raw, score in found][:limit]
        if not parsed:
            return []
        pipe = self._r.pipeline(transaction=False)
        for member, _score in parsed:
            agent, gid, _ns = keys.parse_member(member)
            pipe.get(keys.life(agent, gid))
        lives = await call(pipe.execute())
        return [(m, s, life) for (m, s), life in zip(parsed, lives, strict=True)]

    async def due_expiries(self, now: datetime, limit: int = 500) -> list[DueExpiry]:
        """Grants whose expiry passed; ``live`` says whether to announce (not revoked/released).

        A member whose grant lives on past ``now`` (its warning pending, or renewed) is left to
        the warning sweep; one whose grant ended is due, not live, to be forgotten.
        """
        out = []
        for member, score, life in await self.due_members(now, limit):
            agent, gid, namespaces = keys.parse_member(member)
            if life is not None and int(life) > ms(now):
                continue
            expires = int(life) if life is not None else score
            event = GrantExpired(grant_id=gid, agent_id=agent, expires_at=from_ms(expires))
            out.append(DueExpiry(event, life is not None, namespaces, member))
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
