"""Redis state of the identity checks: signature nonces, spent API assertions, last activity.

Imports redis, keys.

Also imports errors. A nonce key records the Kafka origin (topic/partition/offset) of the first
message that carried a signature: the same origin again is a redelivery (fine), another origin
is a replay. Every key has an absolute expiry past the window in which the signature could be
accepted at all (``iat`` + max age + margin); after that, staleness rejects it anyway.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import async_client, call, is_cluster, translated

LAST_ACTED_LIFE = timedelta(days=30)

# KEYS: nonce [, last-acted]   ARGV: origin, nonce PXAT ms [, agent, acted ms, hash PXAT ms].
#       The first use of a nonce records its origin (and, given the last-acted hash, when its
#       agent acted, in the same step); returns {first origin, 1 if this call recorded it}.
FIRST_SEEN = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PXAT', ARGV[2]) then
  if KEYS[2] then
    redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
    redis.call('PEXPIREAT', KEYS[2], ARGV[5])
  end
  return {ARGV[1], 1}
end
return {redis.call('GET', KEYS[1]) or ARGV[1], 0}
"""


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


class IdentityStore:
    """Nonces and last-acted times; every method raises StoreUnavailable when Redis is down."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._first_seen = client.register_script(FIRST_SEEN)
        # The last-acted hash is one key in its own cluster slot: on a cluster it is written
        # after the nonce, on one node in the nonce's own step (one round trip).
        self._cluster = is_cluster(client)

    @classmethod
    def from_url(cls, url: str) -> IdentityStore:
        """A store on a fresh client for ``url``."""
        return cls(async_client(url))

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._r.aclose()

    async def first_seen(self, principal: str, jti: str, origin: str, until: datetime, *,
                         agent: str = "", at: datetime | None = None) -> tuple[str, bool]:
        """The origin of the nonce's first use (recording ``origin`` if none), and whether this
        call recorded it; a first use by ``agent`` also records that it acted ``at``."""
        acted = at or until
        together = bool(agent) and not self._cluster
        names = [keys.nonce(principal, jti)]
        args: list[str | int] = [origin, _ms(until)]
        if together:
            names.append(keys.LAST_ACTED)
            args += [agent, _ms(acted), _ms(acted + LAST_ACTED_LIFE)]
        first, new = await call(self._first_seen(keys=names, args=args))
        if agent and int(new) and not together:
            await self.mark_acted(agent, acted)
        return (first.decode() if isinstance(first, bytes) else str(first)), bool(int(new))

    async def mark_acted(self, agent_id: str, at: datetime) -> None:
        """Remember when an agent last acted (an admitted event)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(keys.LAST_ACTED, agent_id, _ms(at))
        pipe.pexpireat(keys.LAST_ACTED, _ms(at + LAST_ACTED_LIFE))
        await call(pipe.execute())

    async def last_acted(self) -> dict[str, datetime]:
        """agent id -> when it last acted (within the last 30 days)."""
        raw = await call(self._r.hgetall(keys.LAST_ACTED))
        return {k.decode(): datetime.fromtimestamp(int(v) / 1000, tz=UTC)
                for k, v in raw.items()}


class SpentAssertions:
    """API assertions the HTTP API acted on, each usable once (a blocking client: the API's
    request threads). Only a verified principal's assertion is ever written here."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client

    def spend(self, principal: str, jti: str, until: datetime) -> bool:
        """Record the assertion's use; False when it was used before (StoreUnavailable)."""
        with translated("spend an API assertion"):
            return bool(self._r.set(keys.spent(principal, jti), b"1", nx=True, pxat=_ms(until)))
