"""Redis side of delegation: child grants, decision records, children sets. Imports redis,
broker core, schemas.

Every script touches one agent's slot: the child grant is written in the delegate's, the
decision and the parent's children set in the delegator's (where the parent lives, so the
parent's liveness is checked in the same atomic step as the child's registration), and a
parent's end removes each child in the child's slot, remembering what it removed so a
redelivered end repeats the same revocation and a removed child is never written again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import call, replicated
from broker.adapters.redis.values import from_ms, ms, stored
from schemas.events import DelegationDecided, GrantIssued

# KEYS: grant, index, life, ended-child, quarantine, view marker (agent slot), revoked
# ARGV: grant_json, expires_ms, now_ms, life_until_ms, grant_id, issued_ms
CHILD = """
if redis.call('EXISTS', KEYS[4]) == 1 then return 'ended' end
if redis.call('EXISTS', KEYS[6]) == 0 then return 'view' end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'stored' end
if redis.call('EXISTS', KEYS[5]) == 1 then return 'quarantine' end
local rv = redis.call('GET', KEYS[7])
if rv and tonumber(rv) >= tonumber(ARGV[6]) then return 'revoked' end
if tonumber(ARGV[2]) <= tonumber(ARGV[3]) then return 'stale' end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[2])
redis.call('SET', KEYS[3], ARGV[2], 'PXAT', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
if redis.call('PTTL', KEYS[2]) < 0 then
  redis.call('PEXPIREAT', KEYS[2], ARGV[4])
else
  redis.call('PEXPIREAT', KEYS[2], ARGV[4], 'GT')
end
return 'stored'
"""

# KEYS: decision record, parent grant, parent life, children set
# ARGV: decision json, child member ('' when denied), record_until_ms
RECORD = """
local rec = redis.call('GET', KEYS[1])
if rec then return {'existing', rec} end
if ARGV[2] ~= '' then
  if redis.call('EXISTS', KEYS[2]) == 0 or redis.call('EXISTS', KEYS[3]) == 0 then
    return {'parent-ended', ''}
  end
  redis.call('SADD', KEYS[4], ARGV[2])
  if redis.call('PTTL', KEYS[4]) < 0 then
    redis.call('PEXPIREAT', KEYS[4], ARGV[3])
  else
    redis.call('PEXPIREAT', KEYS[4], ARGV[3], 'GT')
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PXAT', ARGV[3])
return {'stored', ARGV[1]}
"""

# KEYS: grant, life, index, ended-child   ARGV: grant_id, marker_until_ms, now_ms
# Returns "<ms of the end>|<the child grant JSON it removed>" ('' after the bar if the child had
# already ended on its own); the first end's answer on every later call.
END_CHILD = """
local done = redis.call('GET', KEYS[4])
if done then return done end
local g = redis.call('GET', KEYS[1]) or ''
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
local rec = ARGV[3] .. '|' .. g
redis.call('SET', KEYS[4], rec, 'PXAT', ARGV[2])
return rec
"""

ChildStatus = Literal["stored", "ended", "view", "quarantine", "revoked", "stale"]
SEP = keys.MEMBER_SEP


class DelegationStore:
    """Child grants, delegation records and children sets; StoreUnavailable when Redis fails."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._child = client.register_script(CHILD)
        self._record = client.register_script(RECORD)
        self._end = client.register_script(END_CHILD)

    async def recorded(self, agent_id: str, request_id: str) -> DelegationDecided | None:
        """The decision recorded for a delegation request (a redelivery), if any."""
        raw = await call(self._r.get(keys.delegation(agent_id, request_id)))
        return DelegationDecided.model_validate_json(raw) if raw else None

    async def commit_child(self, grant: GrantIssued, now: datetime,
                           life_until: datetime) -> ChildStatus:
        """Write the child grant in its agent's slot, unless something there forbids it."""
        a, g = grant.agent_id, grant.grant_id
        status = await call(self._child(
            keys=[keys.grant(a, g), keys.index(a), keys.life(a, g), keys.ended_child(a, g),
                  keys.quarantine(a), keys.view_marker(a), keys.revoked(a)],
            args=[stored(grant), ms(grant.expires_at), ms(now), ms(life_until), g,
                  ms(grant.issued_at)]))
        return _text(status)  # type: ignore[return-value]

    async def record(self, decision: DelegationDecided, grant: GrantIssued | None,
                     record_until: datetime) -> tuple[str, DelegationDecided | None]:
        """Record the decision once; a granted one only while the parent lives (else
        ('parent-ended', None)); ('existing', recorded) on a redelivery."""
        a, parent = decision.agent_id, decision.parent_grant_id
        member = f"{grant.agent_id}{SEP}{grant.grant_id}" if grant is not None else ""
        status, raw = await call(self._record(
            keys=[keys.delegation(a, decision.request_id), keys.grant(a, parent),
                  keys.life(a, parent), keys.children(a, parent)],
            args=[decision.model_dump_json(), member, ms(record_until)]))
        found = DelegationDecided.model_validate_json(raw) if raw else None
        return _text(status), found

    async def children(self, agent_id: str, grant_id: str) -> list[tuple[str, str]]:
        """(child agent, child grant) of every grant delegated from ``grant_id``."""
        members = await call(self._r.smembers(keys.children(agent_id, grant_id)))
        pairs = (_text(m).split(SEP, 1) for m in members)
        return sorted((p[0], p[1]) for p in pairs if len(p) == 2)

    async def restore_children(self, links: list[tuple[GrantIssued, GrantIssued]],
                               margin: timedelta) -> None:
        """Rebuild: put each (parent, child) link back in the parent's children set, living
        as long as the parent's record would (its expiry + ``margin``), never shortened."""
        pipe = self._r.pipeline(transaction=False)
        for parent, child in links:
            key = keys.children(parent.agent_id, parent.grant_id)
            until = ms(parent.expires_at + margin)
            pipe.sadd(key, f"{child.agent_id}{SEP}{child.grant_id}")
            pipe.pexpireat(key, until, nx=True)  # a new set: the parent's lifetime
            pipe.pexpireat(key, until, gt=True)  # an existing one: never shortened
        await call(pipe.execute())

    async def live_children(self, agent_id: str, grant_id: str) -> list[tuple[str, str]]:
        """The children of ``grant_id`` that are still active."""
        found = await self.children(agent_id, grant_id)
        alive = [await call(self._r.exists(keys.grant(a, g))) for a, g in found]
        return [pair for pair, live in zip(found, alive, strict=True) if live]

    async def end_child(self, agent_id: str, grant_id: str, now: datetime,
                        marker_until: datetime) -> tuple[datetime, GrantIssued | None]:
        """Remove one child grant because its parent ended: when, and the grant it removed
        (None if it had already ended on its own); the first call's answer on every call."""
        raw = await replicated(  # on a cluster: once a replica has it
            self._r, self._end, agent_id,
            [keys.grant(agent_id, grant_id), keys.life(agent_id, grant_id),
             keys.index(agent_id), keys.ended_child(agent_id, grant_id)],
            [grant_id, ms(marker_until), ms(now)], f"end of child grant {grant_id}")
        at, _, text = _text(raw).partition("|")
        return from_ms(at), (GrantIssued.model_validate_json(text) if text else None)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
