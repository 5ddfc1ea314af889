"""Budget counters in Redis: count a use (resource services), end an exhausted grant (workers).

Imports redis, broker core (budgets, errors), schemas. Each call is one Lua script on one agent's
hash slot (``broker.adapters.redis.lua``); a Redis that does not answer raises
``StoreUnavailable`` (callers fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

import redis
import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import lua
from broker.adapters.redis.calls import call, close, replicated, sync_client, translated
from broker.adapters.redis.store import ms
from broker.grants.budgets import Use, UseStatus, cause_of
from schemas.events import GrantIssued, GrantUsed


class BudgetCounter:
    """Counts uses for a resource service (blocking client: the enforcement SDK is threaded)."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._consume = client.register_script(lua.CONSUME)

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0) -> BudgetCounter:
        """A counter on a fresh client for ``url`` (short timeouts: a check must not hang)."""
        return cls(sync_client(url, timeout_s))

    def consume(self, grant: GrantIssued, scope: str, use_id: str) -> Use:
        """Count one use of ``scope`` under ``grant`` (idempotent per ``use_id``)."""
        a = grant.agent_id
        with translated():
            status, used, limit = self._consume(
                keys=[keys.grant(a, grant.grant_id), keys.budget(a, grant.grant_id)],
                args=[use_id, scope])
        return Use(cast(UseStatus, status.decode()), int(used), int(limit))

    def close(self) -> None:
        """Close the client's connections (a cluster client's startup-node ones too)."""
        close(self._r)


@dataclass(frozen=True)
class Exhaustion:
    """What ending an exhausted grant found: the grant it removed (None if already ended)."""

    status: Literal["revoked", "existing", "unverified", "not-exhausted"]
    grant: GrantIssued | None


class BudgetRevoker:
    """Ends grants whose budget a verified use exhausted (async: used inside the worker)."""

    def __init__(self, client: aioredis.Redis, *, margin_s: int = 3600) -> None:
        self._r = client
        self._margin = timedelta(seconds=margin_s)
        self._revoke = client.register_script(lua.REVOKE_EXHAUSTED)

    async def end(self, event: GrantUsed, now: datetime, max_grant_s: int) -> Exhaustion:
        """Remove the grant once per exhaustion, only if the store's counter is at the limit."""
        a, gid, cause = event.agent_id, event.grant_id, cause_of(event)
        until = now + timedelta(seconds=max_grant_s) + self._margin
        status, payload = await replicated(  # on a cluster: once a replica has it
            self._r, self._revoke, a,
            [keys.grant(a, gid), keys.life(a, gid), keys.index(a),
             keys.budget_revoked(a, cause), keys.budget(a, gid)],
            [gid, event.scope, ms(until)], f"budget revocation of grant {gid}")
        kind = cast(Literal["revoked", "existing", "unverified", "not-exhausted"], status.decode())
        ended = kind in ("revoked", "existing") and payload
        return Exhaustion(kind, GrantIssued.model_validate_json(payload) if ended else None)

    async def published(self, event: GrantUsed) -> bool:
        """Whether the revocation of this exhaustion already reached Kafka."""
        return bool(await call(self._r.exists(keys.published(event.agent_id,
                                                                   cause_of(event)))))

    async def mark_published(self, event: GrantUsed, now: datetime, max_grant_s: int) -> None:
        """Remember the revocation was published, so a redelivery publishes nothing again."""
        until = now + timedelta(seconds=max_grant_s) + self._margin
        await call(self._r.set(keys.published(event.agent_id, cause_of(event)), 1,
                                     pxat=ms(until)))
