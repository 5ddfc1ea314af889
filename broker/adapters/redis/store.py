"""Redis grant store: the fast, TTL-bounded view of active grants.

Imports redis, broker core, schemas.

Kafka is the log of record; this view can be rebuilt from it (``broker.adapters.kafka.rebuild``).
Until it has been built (``VIEW_EPOCH`` present) checks fail closed. Every write is one Lua
script on one agent's hash slot, with absolute expiries computed once by the broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import lua, records
from broker.adapters.redis.calls import (
    async_client,
    call,
    is_cluster,
    replicated,
    send_packed,
    translated,
)
from broker.adapters.redis.restore import Rebuild
from broker.adapters.redis.values import (
    NO_FENCE,
    NO_RISK_FENCE,
    UNLIMITED,
    Check,
    Committed,
    DueExpiry,
    Fence,
    RateLimit,
    Snapshot,
    from_ms,
    ms,
    stored,
)
from broker.errors import StoreMisconfigured, StoreUnavailable
from broker.grants.decide import AgentState, Outcome, derive_id
from broker.grants.revocation import RevocationPlan
from schemas.events import EscalationDecided, GrantIssued

__all__ = [  # the values of the store's signatures, importable with it
    "NO_FENCE", "NO_RISK_FENCE", "UNLIMITED", "Check", "Committed", "DueExpiry", "Fence",
    "RateLimit", "RedisGrantStore", "Snapshot", "from_ms", "ms",
]


class RedisGrantStore(Rebuild):
    """Grant store on Redis; every method raises StoreUnavailable when Redis cannot answer.

    Its expiry indexes (``expiry.ExpiryIndex``) and rebuild (``restore.Rebuild``) are inherited.
    """

    def __init__(
        self, client: aioredis.Redis, *, margin_s: int = 3600, warn_before_s: float = 30.0
    ) -> None:
        self._r = client
        self._cluster = is_cluster(client)
        self._margin = timedelta(seconds=margin_s)
        self._warn_before = warn_before_s
        self._commit = client.register_script(lua.COMMIT)
        self._revoke = client.register_script(lua.REVOKE_ALL)
        self._check = client.register_script(lua.CHECK)
        self._restore = client.register_script(lua.RESTORE)
        self._release = client.register_script(lua.RELEASE)
        self._note_risk = client.register_script(lua.NOTE_RISK)
        self._claim = client.register_script(lua.CLAIM)
        self._mark = client.register_script(lua.MARK_PUBLISHED)

    @classmethod
    def from_url(
        cls, url: str, *, margin_s: int = 3600, warn_before_s: float = 30.0
    ) -> RedisGrantStore:
        """A store on a fresh client for ``url``."""
        client = async_client(url)
        return cls(client, margin_s=margin_s, warn_before_s=warn_before_s)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client (for the lifecycle store sharing its connections)."""
        return self._r

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._r.aclose()

    async def check_config(self) -> None:
        """Refuse a Redis that may evict keys (it would drop grants or revocation markers)."""
        for cfg in await self._node_configs():
            policy = cfg.get("maxmemory-policy") or cfg.get(b"maxmemory-policy") or b""
            policy = policy.decode() if isinstance(policy, bytes) else str(policy)
            self._refuse_eviction(policy)

    async def _node_configs(self) -> list[dict[Any, Any]]:
        """``maxmemory-policy`` of the one Redis, or of every node of a cluster."""
        if isinstance(self._r, aioredis.RedisCluster):
            cluster: Any = self._r
            found = await call(cluster.config_get(
                "maxmemory-policy", target_nodes=aioredis.RedisCluster.ALL_NODES))
            return list(found.values()) if "maxmemory-policy" not in found else [found]
        return [await call(self._r.config_get("maxmemory-policy"))]

    @staticmethod
    def _refuse_eviction(policy: str) -> None:
        if policy != "noeviction":
            raise StoreMisconfigured(
                f"Redis maxmemory-policy is {policy!r}; permbroker needs 'noeviction' "
                "(eviction would silently drop live grants or revocation markers). "
                "Run: CONFIG SET maxmemory-policy noeviction"
            )

    async def view_epoch(self) -> datetime | None:
        """When the view was last built from Kafka, or None (then nothing is allowed)."""
        raw = await call(self._r.get(keys.VIEW_EPOCH))
        return from_ms(raw) if raw else None

    async def mark_built(self, now: datetime) -> None:
        """Record that the view now reflects the log: every slot's marker, then the epoch.

        A node that loses its data (a flush, a failover to a replica that missed the writes)
        loses its slots' markers with it: the agents on those slots are denied until a rebuild.
        """
        epoch = ms(now)
        with translated("mark the view built"):
            if self._cluster:  # a cluster refuses an MSET across slots: one SET per slot
                pipe = self._r.pipeline(transaction=False)
                for marker in keys.view_markers():
                    pipe.set(marker, epoch)
                await pipe.execute()
            else:  # one MSET, packed once (see ``_packed_markers``)
                await send_packed(self._r, _packed_markers(epoch))
        await call(self._r.set(keys.VIEW_EPOCH, epoch))

    async def baselines_stated(self) -> str | None:
        """The fingerprint of the statements a worker last stated for every agent, while it
        holds."""
        raw = await call(self._r.get(keys.BASELINES_STATED))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def mark_baselines_stated(self, fingerprint: str, ttl_s: int) -> None:
        """Record that every agent's baseline was stated under ``fingerprint``, for ``ttl_s``."""
        await call(self._r.set(keys.BASELINES_STATED, fingerprint, ex=ttl_s))

    async def now(self) -> datetime:
        """Redis's clock: the one that expires every key, so the one grants are judged by."""
        sec, usec = await call(self._r.time())
        return datetime.fromtimestamp(int(sec) + int(usec) / 1e6, tz=UTC)

    async def snapshot(
        self, agent_id: str, fence_key: str | None = None, request_id: str | None = None
    ) -> Snapshot:
        """Clock, quarantine, last revocation, live risk, view state (and a partition's fence).

        With ``request_id``, also what is recorded for that request (``recorded``), in the same
        round trip: a redelivery is recognised without a round trip of its own.
        """
        pipe = self._r.pipeline(transaction=False)
        if self._cluster:  # TIME has no key: a cluster pipeline refuses it
            clock = await call(self._r.time())
        else:
            pipe.time()
        pipe.get(keys.quarantine(agent_id))
        pipe.pexpiretime(keys.quarantine(agent_id))
        pipe.get(keys.revoked(agent_id))
        pipe.get(keys.risk(agent_id))
        pipe.exists(keys.view_marker(agent_id))
        pipe.hmget(keys.rate(agent_id), "t", "ts")
        if fence_key is not None:
            pipe.get(fence_key)
        if request_id is not None:
            self._queue_recorded(pipe, agent_id, request_id)
        got = await call(pipe.execute())
        if self._cluster:
            got = [clock, *got]
        (sec, usec), rule, pxat, revoked, risk, built, (tokens, ts) = got[:7]
        found = self._recorded(*got[-3:]) if request_id is not None else None
        return Snapshot(
            now=datetime.fromtimestamp(int(sec) + int(usec) / 1e6, tz=UTC),
            state=AgentState(
                quarantined_until=from_ms(pxat) if rule and pxat > 0 else None,
                quarantine_rule=rule.decode() if rule else "",
                revoked_at=from_ms(revoked) if revoked else None,
            ),
            risk=float(risk) if risk else 0.0,
            view_built=bool(built),
            fence_epoch=int(got[7] or 0) if fence_key is not None else None,
            recorded=found,
            bucket=(float(tokens), int(ts)) if tokens is not None and ts is not None else None,
        )

    async def agent_state(self, agent_id: str) -> AgentState:
        """Quarantine and last revocation of an agent."""
        return (await self.snapshot(agent_id)).state

    async def live_risk(self, agent_id: str) -> float:
        """The highest recent non-revoking risk severity about the agent (0 when none)."""
        return (await self.snapshot(agent_id)).risk

    async def fence_epoch(self, fence_key: str) -> int:
        """The newest claimed epoch of an input partition (0 when none, e.g. after a wipe)."""
        return int(await call(self._r.get(fence_key)) or 0)

    async def claim(self, fence_key: str) -> int:
        """Become the newest owner of an input partition; returns the epoch to write with."""
        return int(await call(self._claim(keys=[fence_key])))

    async def note_risk(self, agent_id: str, severity: float, until: datetime) -> float:
        """Remember a risk severity until ``until``; returns the live risk.

        A signal read long after it was appended (a worker catching up) may have an ``until``
        already past: Redis then drops the key at once and there is no live risk (0).
        """
        raw = await call(
            self._note_risk(keys=[keys.risk(agent_id)], args=[repr(severity), ms(until)])
        )
        return float(raw) if raw is not None else 0.0

    async def commit(
        self,
        outcome: Outcome,
        *,
        received_at: datetime,
        now: datetime,
        max_grant_s: int,
        fence: Fence = NO_FENCE,
        rate: RateLimit = UNLIMITED,
    ) -> Committed:
        """Store a decision (and its grant) once; a redelivery gets the recorded decision back.

        One round trip: the expiry index entry and the commit script share a pipeline. The
        partition's claimed epoch (``fence.claim``) is checked in the script; on a cluster,
        where it lives in another slot, it is read just before.
        """
        claim = fence.claim if fence.epoch > 0 else ""
        if claim and self._cluster and (owner := await self.fence_epoch(claim)) > fence.epoch:
            return Committed("fenced", None, None, False, str(owner), "")
        d, g = outcome.decision, outcome.grant
        agent = d.agent_id
        expires = g.expires_at if g else received_at
        record_until = self._record_until(expires, received_at, max_grant_s)
        gid = g.grant_id if g else ""
        script_keys, script_args = (
            [
                *_commit_keys(agent, d.request_id, gid, fence.role),
                *([claim] if claim and not self._cluster else []),
            ],
            [
                records.pack(stored(d)),
                stored(g) if g else "",
                ms(expires),
                ms(received_at),
                ms(now),
                ms(record_until),
                gid,
                fence.epoch,
                rate.capacity,
                rate.per_ms,
            ],
        )

        def fill(pipe: Any) -> None:
            if g is not None:
                self._index_expiry(pipe, g, record_until)

        status, payload, extra, published = await self._with_script(
            lua.COMMIT, fill, script_keys, script_args)
        status = status.decode()
        if status in ("blocked", "fenced"):
            return Committed(status, None, None, False, payload.decode(), extra.decode())
        if status == "stored":  # exactly what was passed in: no need to parse it back
            return Committed(status, d, g, False)
        found = self._recorded(payload, extra or None, published)
        assert found is not None
        return Committed(status, found.decision, found.grant, found.published)

    async def _with_script(self, script: str, fill: Callable[[Any], None],
                           script_keys: list[str], script_args: list[Any]) -> Any:
        """Run the commands ``fill`` queues, then the commit script: one round trip.

        (A script registered on a redis-py pipeline costs a SCRIPT EXISTS round trip on every
        execute.) If Redis lacks the script (restarted, flushed), it is loaded and the whole
        pipeline runs again: its other commands are idempotent, and the script did not run.
        A cluster pipeline cannot carry a script: there the commands go first, then the script.
        """
        if self._cluster:
            pipe = self._r.pipeline(transaction=False)
            fill(pipe)
            await call(pipe.execute())
            return await call(self._commit(keys=script_keys, args=script_args))
        with translated():
            for _ in range(2):
                pipe = self._r.pipeline(transaction=False)
                fill(pipe)
                pipe.evalsha(self._commit.sha, len(script_keys), *script_keys, *script_args)
                try:
                    return list(await pipe.execute())[-1]
                except NoScriptError:
                    await self._r.script_load(script)
        raise StoreUnavailable("Redis lost the commit script twice in a row")

    async def recorded(self, agent_id: str, request_id: str) -> Committed | None:
        """The decision stored for a request (as a commit would find it), or None."""
        pipe = self._r.pipeline(transaction=False)
        self._queue_recorded(pipe, agent_id, request_id)
        return self._recorded(*await call(pipe.execute()))

    def _queue_recorded(self, pipe: Any, agent_id: str, request_id: str) -> None:
        """Queue the reads of a request's record: the record, its grant, the legacy marker."""
        pipe.get(keys.decision(agent_id, request_id))
        pipe.get(keys.grant(agent_id, derive_id("grant", request_id, agent_id)))
        pipe.exists(keys.published(agent_id, request_id))

    def _recorded(self, raw: bytes | None, grant_raw: bytes | None,
                  legacy_published: int) -> Committed | None:
        """The record as a commit would find it (the grant only while it is live)."""
        if raw is None:
            return None
        payload, published = records.unpack(raw)
        decision = EscalationDecided.model_validate_json(payload)
        grant = GrantIssued.model_validate_json(grant_raw) if grant_raw else None
        if grant is not None and grant.grant_id != decision.grant_id:
            grant = None  # a decision's grant id always derives from its request; never another
        done = published if published is not None else bool(int(legacy_published))
        return Committed("existing", decision, grant, done)

    def _record_until(self, expires: datetime, received_at: datetime, max_grant_s: int) -> datetime:
        """How long a request's records live: past any grant it could mint, plus a margin."""
        return max(expires, received_at + timedelta(seconds=max_grant_s)) + self._margin

    async def mark_published(
        self, decision: EscalationDecided, *, received_at: datetime, max_grant_s: int
    ) -> None:
        """Remember that a decision reached Kafka, so a later delivery is a mere duplicate."""
        until = self._record_until(decision.expires_at or received_at, received_at, max_grant_s)
        a, rid = decision.agent_id, decision.request_id
        await call(
            self._mark(keys=[keys.decision(a, rid), keys.published(a, rid)], args=[ms(until)])
        )

    async def revoke_all(
        self, plan: RevocationPlan, fence: Fence = NO_RISK_FENCE
    ) -> tuple[GrantIssued, ...] | None:
        """Remove every grant of the agent and leave markers; idempotent per cause event.

        None when a newer owner claimed the signal's partition (``fence.claim``: checked in the
        script; on a cluster, where it lives in another slot, read just before) or has written
        for the agent (fenced). On a cluster it returns only once a replica has the revocation
        (``calls.replicated``).
        """
        a = plan.agent_id
        claim = fence.claim if fence.epoch > 0 else ""
        if claim and self._cluster and await self.fence_epoch(claim) > fence.epoch:
            return None
        raw = await replicated(
            self._r, self._revoke, a,
            [
                keys.index(a),
                keys.revoked(a),
                keys.quarantine(a),
                keys.revocation(a, plan.cause_id),
                keys.owner(a, fence.role),
                *([claim] if claim and not self._cluster else []),
            ],
            [
                ms(plan.revoked_at),
                ms(plan.marker_until),
                ms(plan.quarantine_until) if plan.quarantine_until else 0,
                ms(plan.marker_until + self._margin),
                keys.agent_prefix(a),
                plan.rule,
                fence.epoch,
            ],
            f"revocation of {a}",
        )
        if isinstance(raw, bytes) and raw.startswith(b"fenced:"):
            return None
        return tuple(GrantIssued.model_validate(item) for item in json.loads(raw))

    async def release(self, grant: GrantIssued) -> bool:
        """End one grant early (the agent gave it back); True if it was live."""
        a = grant.agent_id
        live = await call(
            self._release(
                keys=[keys.life(a, grant.grant_id), keys.grant(a, grant.grant_id), keys.index(a)],
                args=[grant.grant_id],
            )
        )
        return bool(live)

    async def check(self, agent_id: str, scope: str, resource: str, now: datetime) -> Check:
        """Is ``scope`` on ``resource`` allowed for the agent right now? Fails closed.

        An unreachable Redis is a denial with the reason (within the client's socket timeouts),
        never an exception and never an allow.
        """
        try:
            return await self._check_live(agent_id, scope, resource, now)
        except StoreUnavailable as exc:
            return Check(False, f"grant store unavailable, denying (fail closed): {exc}")

    async def _check_live(self, agent_id: str, scope: str, resource: str, now: datetime) -> Check:
        if not await call(self._r.exists(keys.view_marker(agent_id))):
            return Check(
                False, "grant view not built from Kafka yet (run: permbroker grants rebuild)"
            )
        raw = await call(
            self._check(
                keys=[keys.index(agent_id)],
                args=[ms(now), scope, resource, keys.agent_prefix(agent_id)],
            )
        )
        if not raw:
            return Check(False, f"no active grant of {scope} on {resource or '*'} for {agent_id}")
        grant = GrantIssued.model_validate_json(raw)
        return Check(True, f"grant {grant.grant_id} until {grant.expires_at.isoformat()}", grant)

    async def active_grants(self, agent_id: str, now: datetime) -> list[GrantIssued]:
        """Live grants of one agent: plain reads (its index, then its grants: one slot), so
        a user that may only read the agent's keys lists them too (a tenant's operator)."""
        ids = await call(self._r.zrangebyscore(keys.index(agent_id), f"({ms(now)}", "+inf"))
        if not ids:
            return []
        names = [keys.grant(agent_id, g.decode() if isinstance(g, bytes) else g) for g in ids]
        raw = await call(self._r.mget(names))
        return [GrantIssued.model_validate_json(item) for item in raw if item is not None]

    async def agents_with_grants(self) -> list[str]:
        """Agent ids that have a grant index (for listings)."""
        out: list[str] = []
        with translated():
            async for key in self._r.scan_iter(match=f"{keys.PREFIX}:{{*}}:grants", count=500):
                text = key.decode()
                out.append(text[text.index("{") + 1 : text.rindex("}")])
        return sorted(set(out))


def _bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


@cache
def _marker_names() -> tuple[bytes, tuple[bytes, ...]]:
    """The MSET header and every slot's marker name as RESP bulk strings, encoded once."""
    names = keys.view_markers()
    header = b"*%d\r\n%s" % (1 + 2 * len(names), _bulk(b"MSET"))
    return header, tuple(_bulk(name.encode()) for name in names)


def _packed_markers(epoch: int) -> bytes:
    """``MSET <marker> <epoch> ...`` for every slot, as the bytes Redis reads: about 1 ms,
    where redis-py's packing of the 32,768 arguments takes about 20 ms per rebuild."""
    header, names = _marker_names()
    value = _bulk(str(epoch).encode())
    return header + value.join(names) + value


def _commit_keys(agent: str, request_id: str, grant_id: str, role: str) -> list[str]:
    """The commit script's keys of the agent's slot, in its KEYS order (lua.COMMIT)."""
    return [
        keys.decision(agent, request_id),
        keys.grant(agent, grant_id),
        keys.index(agent),
        keys.revoked(agent),
        keys.quarantine(agent),
        keys.life(agent, grant_id),
        keys.published(agent, request_id),
        keys.view_marker(agent),
        keys.owner(agent, role),
        keys.rate(agent),
    ]
