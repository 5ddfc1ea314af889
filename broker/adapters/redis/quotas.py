"""Tenant quotas in Redis: a tenant's escalations bucket and its count of active grants.

Imports redis, broker core (policy model, errors), schemas. Each call is one Lua script on one
tenant's keys (hash tag ``{tenant}``: one Redis Cluster slot, apart from any agent's keys).

The check runs before a request is decided and the count after its grant is stored, in two
scripts (an agent's commit cannot touch a tenant's slot). So the active-grants count may pass
its limit by the grants decided at the same instant on other partitions, and a revoked grant
is counted until its expiry (a view rebuild counts the live grants again): between rebuilds the
count errs towards denying.
"""

from __future__ import annotations

from datetime import datetime
from typing import cast

import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import call
from broker.adapters.redis.values import ms
from broker.policy.model import QUOTA_ACTIVE_GRANTS, Quotas
from schemas.events import GrantIssued, ScopeDenial

# KEYS: rate bucket, grants zset. ARGV: now ms, rate capacity (0: none), period ms,
# active grants limit (0: none). The active count is read first, so a request it refuses
# takes no token. -> {'ok'} | {'active', count} | {'rate', retry_ms}
CHECK = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local most = tonumber(ARGV[4])
if most > 0 then
  local count = redis.call('ZCARD', KEYS[2])
  if count >= most then return {'active', tostring(count)} end
end
local cap = tonumber(ARGV[2])
if cap > 0 then
  local per = tonumber(ARGV[3])
  local b = redis.call('HMGET', KEYS[1], 't', 'ts')
  local tokens, ts = tonumber(b[1]) or cap, tonumber(b[2]) or now
  if now > ts then tokens = math.min(cap, tokens + (now - ts) * cap / per); ts = now end
  if tokens < 1 then
    return {'rate', string.format('%d', math.ceil((1 - tokens) * per / cap))}
  end
  redis.call('HSET', KEYS[1], 't', string.format('%.6f', tokens - 1), 'ts',
             string.format('%d', ts))
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', ts + per))
end
return {'ok', ''}
"""
# KEYS: grants zset. ARGV: grant id, expires_at ms. Idempotent (a redelivery counts once).
COUNT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('PEXPIRETIME', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])
"""


class QuotaStore:
    """Checks a tenant's quotas before a decision and counts its grants after one."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._check = client.register_script(CHECK)
        self._count = client.register_script(COUNT)

    async def denial(self, tenant: str, quotas: Quotas, now: datetime) -> ScopeDenial | None:
        """Why the tenant's next request is refused (the quota rule named), or None (a token of
        its escalations quota is then taken). StoreUnavailable when Redis does not answer."""
        if not quotas.any:
            return None
        rate, most = quotas.escalations, quotas.active_grants or 0
        status, detail = await call(self._check(
            keys=[keys.tenant_rate(tenant), keys.tenant_grants(tenant)],
            args=[ms(now), rate.requests if rate else 0, rate.per_s * 1000 if rate else 1000,
                  most]), f"tenant {tenant}'s quotas")
        kind, found = cast(bytes, status).decode(), cast(bytes, detail).decode()
        if kind == "active":
            return ScopeDenial(scope="*", rule=QUOTA_ACTIVE_GRANTS, reason=(
                f"tenant {tenant} holds {found} active grants, its quota of {most} "
                "(quotas.active_grants in its bundle); one frees up when a grant ends"))
        if kind == "rate" and rate is not None:
            return ScopeDenial(scope="*", rule=rate.rule, reason=(
                f"tenant {tenant} is over its escalations quota ({rate.describe()} across its "
                f"agents); a token frees up in {found} ms"))
        return None

    async def count(self, grant: GrantIssued) -> None:
        """Count a stored grant against its tenant's active grants until it expires."""
        await call(self._count(keys=[keys.tenant_grants(grant.tenant)],
                               args=[grant.grant_id, ms(grant.expires_at)]),
                   f"tenant {grant.tenant}'s grant count")
