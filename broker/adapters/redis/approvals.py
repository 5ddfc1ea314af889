"""Redis store of held requests (escalations, delegations) and their votes. Imports redis,
broker (core, adapters), schemas.

One hash per held request (``keys.approval``), written by Lua so that opening, counting a vote
and expiring are each atomic on the agent's slot: an approver counts once, a deny wins, and
the status moves from ``pending`` exactly once. Every key carries an absolute expiry (PXAT):
the hash lives past its window by the longest grant plus a margin (so a late or redelivered
vote still finds it closed); the global due index past the latest window it holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import call, is_cluster
from broker.adapters.redis.store import UNLIMITED, RateLimit, from_ms, ms
from broker.grants.approvals import Resolution, Status
from broker.grants.decide import Pending
from broker.grants.delegation_hold import HeldDelegation

# KEYS: approval hash, the agent's rate bucket. ARGV: pending JSON, window end ms, record until
# ms, bucket capacity (0: unlimited), bucket period ms, now ms. A held request takes a token of
# the agent's rate limit like any decided request ({'rate', retry ms, '0'} when none is left).
OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  local published = redis.call('HGET', KEYS[1], 'published') or '0'
  return {'existing', redis.call('HGET', KEYS[1], 'status'), published}
end
local cap = tonumber(ARGV[4])
if cap > 0 then
  local per, now = tonumber(ARGV[5]), tonumber(ARGV[6])
  local b = redis.call('HMGET', KEYS[2], 't', 'ts')
  local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * cap / per); ts = now end
  if tokens < 1 then
    return {'rate', string.format('%d', math.ceil((1 - tokens) * per / cap)), '0'}
  end
  redis.call('HSET', KEYS[2], 't', string.format('%.6f', tokens - 1), 'ts', string.format('%d', ts))
  redis.call('PEXPIREAT', KEYS[2], string.format('%d', ts + per))
end
redis.call('HSET', KEYS[1], 'pending', ARGV[1], 'status', 'pending', 'window_end', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return {'opened', 'pending', '0'}
"""

# KEYS: approval hash. ARGV: approver, verdict, voted_at ms, vote id, quorum.
# Returns {what, status, decided_at ms or ''}; what: unknown|closed|late|duplicate|counted.
VOTE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown', '', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'pending' then
  return {'closed', status, redis.call('HGET', KEYS[1], 'decided_at') or ''}
end
if tonumber(ARGV[3]) >= tonumber(redis.call('HGET', KEYS[1], 'window_end')) then
  return {'late', status, ''}
end
local field = 'vote:' .. ARGV[1]
if redis.call('HEXISTS', KEYS[1], field) == 1 then return {'duplicate', status, ''} end
redis.call('HSET', KEYS[1], field, ARGV[2])
if ARGV[2] == 'deny' then
  status = 'denied'
else
  local n = 0
  local all = redis.call('HGETALL', KEYS[1])
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 5) == 'vote:' and all[i + 1] == 'approve' then n = n + 1 end
  end
  if n >= tonumber(ARGV[5]) then status = 'approved' end
end
if status == 'pending' then return {'counted', status, ''} end
redis.call('HSET', KEYS[1], 'status', status, 'decided_at', ARGV[3], 'decider', ARGV[4])
return {'counted', status, ARGV[3]}
"""

# KEYS: approval hash. ARGV: now ms. Closes a pending request whose window has ended.
EXPIRE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone', ''} end
local status = redis.call('HGET', KEYS[1], 'status')
local window_end = redis.call('HGET', KEYS[1], 'window_end')
if status == 'pending' and tonumber(ARGV[1]) >= tonumber(window_end) then
  status = 'expired'
  redis.call('HSET', KEYS[1], 'status', status, 'decided_at', window_end, 'decider', 'window')
end
return {status, redis.call('HGET', KEYS[1], 'decided_at') or ''}
"""


@dataclass(frozen=True)
class Held:
    """A held request as stored: the pending record, its status and the votes so far."""

    pending: Pending | HeldDelegation  # a held escalation, or a held delegation
    status: Status
    votes: dict[str, str]  # approver -> approve | deny
    decided_at: datetime | None
    published: bool

    def resolution(self) -> Resolution | None:
        """How it ended (None while pending)."""
        if self.status == "pending" or self.decided_at is None:
            return None
        approvers = tuple(a for a, v in self.votes.items() if v == "approve")
        denier = next((a for a, v in self.votes.items() if v == "deny"), "")
        return Resolution(self.status, self.decided_at, approvers, denier)


class ApprovalStore:
    """Held requests on Redis; every method raises StoreUnavailable when Redis cannot answer."""

    def __init__(self, client: Any, *, margin_s: int = 3600) -> None:
        self._r = client
        self._margin = timedelta(seconds=margin_s)
        self._open = client.register_script(OPEN)
        self._vote = client.register_script(VOTE)
        self._expire = client.register_script(EXPIRE)

    def _until(self, pending: Pending | HeldDelegation, max_grant_s: int) -> datetime:
        return pending.event.window_expires_at + timedelta(seconds=max_grant_s) + self._margin

    async def open(self, pending: Pending | HeldDelegation, max_grant_s: int, *,
                   rate: RateLimit = UNLIMITED,
                   now: datetime | None = None) -> tuple[str, Status, bool]:
        """Hold a request once: (opened | existing | rate, status, pending event published).

        ``rate``: the agent's request rate limit; 'rate' means none was left (nothing held).
        """
        event = pending.event
        until = self._until(pending, max_grant_s)
        member = keys.MEMBER_SEP.join((event.agent_id, event.request_id))
        pipe = self._r.pipeline(transaction=False)
        pipe.zadd(keys.APPROVALS_DUE, {member: ms(event.window_expires_at)})
        pipe.pexpireat(keys.APPROVALS_DUE, ms(until), gt=True)
        pipe.pexpireat(keys.APPROVALS_DUE, ms(until), nx=True)
        opening = {"keys": [keys.approval(event.agent_id, event.request_id),
                            keys.rate(event.agent_id)],
                   "args": [pending.to_json(), ms(event.window_expires_at), ms(until),
                            rate.capacity, rate.per_ms, ms(now or event.decided_at)]}
        if is_cluster(self._r):  # a cluster pipeline cannot carry a script: index first
            await call(pipe.execute())
            what, status, published = await call(self._open(**opening))
        else:
            await self._open(**opening, client=pipe)
            what, status, published = (await call(pipe.execute()))[-1]
        if what == b"rate":
            return "rate", "pending", False
        return what.decode(), cast(Status, status.decode()), published == b"1"

    async def mark_published(self, agent_id: str, request_id: str) -> None:
        """The pending event reached Kafka (a redelivered request does not publish it again)."""
        await call(self._r.hset(keys.approval(agent_id, request_id), "published", "1"))

    async def get(self, agent_id: str, request_id: str) -> Held | None:
        """The held request, or None (never held, or forgotten long after its window)."""
        raw = await call(self._r.hgetall(keys.approval(agent_id, request_id)))
        if not raw or b"pending" not in raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Held(
            pending=_held(fields["pending"]),
            status=cast(Status, fields["status"]),
            votes={k.removeprefix("vote:"): v for k, v in fields.items()
                   if k.startswith("vote:")},
            decided_at=from_ms(fields["decided_at"]) if "decided_at" in fields else None,
            published=fields.get("published") == "1",
        )

    async def vote(self, agent_id: str, request_id: str, *, approver: str, verdict: str,
                   at: datetime, vote_id: str, quorum: int) -> tuple[str, Status]:
        """Count one vote atomically: (unknown|closed|late|duplicate|counted, status after)."""
        what, status, _decided = await call(self._vote(
            keys=[keys.approval(agent_id, request_id)],
            args=[approver, verdict, ms(at), vote_id, quorum]))
        return what.decode(), cast(Status, status.decode() or "pending")

    async def expire(self, agent_id: str, request_id: str, now: datetime) -> Status | None:
        """Close the request if its window has ended unanswered; its status (None: gone)."""
        status, _decided = await call(self._expire(
            keys=[keys.approval(agent_id, request_id)], args=[ms(now)]))
        return None if status == b"gone" else cast(Status, status.decode())

    async def due(self, until: datetime, limit: int = 200) -> list[tuple[str, str]]:
        """Held requests whose window ended by ``until``: (agent, request id)."""
        members = await call(self._r.zrangebyscore(
            keys.APPROVALS_DUE, "-inf", ms(until), start=0, num=limit))
        return [cast(tuple[str, str], tuple(m.decode().split(keys.MEMBER_SEP, 1)))
                for m in members]

    async def forget_due(self, agent_id: str, request_id: str) -> None:
        """Drop a request from the due index once its final decision was published."""
        member = keys.MEMBER_SEP.join((agent_id, request_id))
        await call(self._r.zrem(keys.APPROVALS_DUE, member))

    async def listed(self, limit: int = 500) -> list[Held]:
        """Every held request still indexed (pending, or closed but not yet announced)."""
        members = await call(self._r.zrange(keys.APPROVALS_DUE, 0, limit - 1))
        held = []
        for m in members:
            agent, request = m.decode().split(keys.MEMBER_SEP, 1)
            found = await self.get(agent, request)
            if found is not None:
                held.append(found)
        return held


def _held(raw: str) -> Pending | HeldDelegation:
    data = json.loads(raw)
    return HeldDelegation.from_json(data) if "delegation" in data else Pending.from_json(raw)
