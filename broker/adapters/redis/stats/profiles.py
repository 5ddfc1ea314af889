"""Behaviour profiles in Redis (hash-tagged per agent, always with a TTL). Imports redis, broker.

One hash per agent (``keys.behaviour``): the profile JSON and the offset of the last decision
folded into it. A save is a compare-and-set on that offset in one Lua step, so a decision
redelivered after a worker restart is never counted twice, and the key is written with an
absolute expiry (PXAT) in the same step. One hash per agent class (``keys.behaviour_class``)
holds the patterns any agent of the class used and its request count, also with a PXAT.
Per agent class and model version, one small hash per time bucket (``keys.behaviour_group``)
counts requests, grants and denials, each expiring with the longest detector window. Class
and group keys are a tenant's own: no tenant's agents make a pattern known, or count, for
another tenant's class of the same name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis.asyncio as aioredis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import async_client, call
from broker.adapters.redis.values import ms
from broker.behaviour.profiles import ClassView, Profile
from broker.behaviour.stats import group_report, window_buckets
from broker.behaviour.usage import UsageWindow, new_checks
from broker.policy.detectors import Detectors, UnusualResources
from schemas.topics import DEFAULT_TENANT

WHAT = "behaviour profiles"  # names the store in its errors
CLASS_COUNT = "#requests"  # field of the class hash holding its request count

# KEYS[1] profile hash; ARGV: partition, offset, profile JSON, expire-at ms.
# 1 = saved, 0 = this partition's decision at or after ``offset`` is already in it.
SAVE = """
local partition = redis.call('HGET', KEYS[1], 'partition')
local current = tonumber(redis.call('HGET', KEYS[1], 'offset') or '-1')
if partition == ARGV[1] and current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'partition', ARGV[1], 'offset', ARGV[2], 'profile', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
"""
# KEYS[1] class hash; ARGV: at ms, expire-at ms, patterns... (count +1, patterns stamped).
LEARN = """
redis.call('HINCRBY', KEYS[1], '#requests', 1)
for i = 3, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], ARGV[1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""


class ProfileStore:
    """Reads and writes behaviour profiles; Redis errors become StoreUnavailable."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._save = client.register_script(SAVE)
        self._learn = client.register_script(LEARN)

    @classmethod
    def from_url(cls, url: str) -> ProfileStore:
        """A store on a fresh client for ``url``."""
        return cls(async_client(url))

    async def load(self, agent_id: str) -> tuple[Profile | None, tuple[int, int]]:
        """The agent's profile and the (partition, offset) of the last decision in it
        ((-1, -1): none)."""
        fields = ["profile", "partition", "offset"]
        raw = await call(self._r.hmget(keys.behaviour(agent_id), fields), f"{WHAT}: load")
        text, partition, offset = raw
        position = (int(partition), int(offset)) if partition is not None and offset is not None \
            else (-1, -1)
        return (Profile.from_json(text) if text else None), position

    async def save(self, agent_id: str, profile: Profile, position: tuple[int, int],
                   expire_ms: int) -> bool:
        """Store the profile unless this partition's decision at or after the offset of
        ``position`` is already in it (a decision on another partition, after the topic grew,
        is always newer)."""
        done = await call(self._save(
            keys=[keys.behaviour(agent_id)],
            args=[position[0], position[1], profile.to_json(), expire_ms]), f"{WHAT}: save")
        return bool(done)

    async def class_view(self, agent_class: str, patterns: tuple[str, ...],
                         tenant: str = DEFAULT_TENANT) -> ClassView:
        """The tenant's class's request count and which of ``patterns`` it used before."""
        fields = [CLASS_COUNT, *patterns]
        raw = await call(self._r.hmget(keys.behaviour_class(agent_class, tenant), fields),
                         f"{WHAT}: class view")
        known = frozenset(p for p, v in zip(patterns, raw[1:], strict=True) if v is not None)
        return ClassView(int(raw[0] or 0), known)

    async def learn(self, agent_class: str, patterns: tuple[str, ...], at_ms: int,
                    expire_ms: int, tenant: str = DEFAULT_TENANT) -> None:
        """Count one request of the tenant's class and remember its patterns (until
        ``expire_ms``)."""
        await call(self._learn(keys=[keys.behaviour_class(agent_class, tenant)],
                               args=[at_ms, expire_ms, *patterns]), f"{WHAT}: learn")

    async def count_group(self, agent_class: str, model_version: str, bucket_ms: int,
                          granted: bool, expire_ms: int, tenant: str = DEFAULT_TENANT) -> None:
        """Count one decided request in its tenant's class and model version's time bucket."""
        key = keys.behaviour_group(agent_class, model_version, bucket_ms, tenant)

        async def write() -> None:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hincrby(key, "r", 1)
                pipe.hincrby(key, "g" if granted else "d", 1)
                pipe.pexpireat(key, expire_ms)
                await pipe.execute()

        await call(write(), f"{WHAT}: count group")

    async def group_window(self, agent_class: str, model_version: str, starts: list[int],
                           tenant: str = DEFAULT_TENANT) -> tuple[int, int, int]:
        """(requests, granted, denied) of a tenant's class and model version over the buckets
        starting at ``starts``."""
        async def read() -> list[list[bytes | None]]:
            async with self._r.pipeline(transaction=False) as pipe:
                for start in starts:
                    pipe.hmget(keys.behaviour_group(agent_class, model_version, start,
                                                    tenant), ["r", "g", "d"])
                return list(await pipe.execute())

        rows = await call(read(), f"{WHAT}: group window")
        totals = [sum(int(row[i] or 0) for row in rows) for i in range(3)]
        return totals[0], totals[1], totals[2]

    async def group_stats(self, agent_class: str, model_version: str, cfg: Detectors,
                          now: datetime, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """A tenant's class and model version's request, grant and denial counts in the
        detector windows ending ``now`` (``broker.behaviour.stats.group_report``)."""
        counts = [(seconds, starts,
                   await self.group_window(agent_class, model_version, starts, tenant))
                  for seconds, starts in window_buckets(cfg, now)]
        return {**group_report(agent_class, model_version, now, counts), "tenant": tenant}

    async def ttl_ms(self, agent_id: str) -> int:
        """Milliseconds the agent's profile key has left (-2: absent)."""
        return int(await call(self._r.pttl(keys.behaviour(agent_id)), f"{WHAT}: ttl"))

    async def close(self) -> None:
        """Close the client."""
        await self._r.aclose()

    async def observe_checks(self, agent_id: str, report_id: str,
                             checks: list[tuple[str, datetime]],
                             rule: UnusualResources) -> UsageWindow | None:
        """Fold one report's checks (resource, when) into the agent's usual set and window;
        the window after it, or None for a report already observed. The report is marked
        first: a crash before its checks are counted loses them for the detector, never
        counts them twice."""
        latest = max(ms(at) for _, at in checks)
        window_ms, remember_ms = rule.window_s * 1000, rule.remember_s * 1000
        marked = await call(self._r.set(keys.usage_report(agent_id, report_id), "1", nx=True,
                                        pxat=latest + remember_ms))
        known_key, window_key = keys.usage_known(agent_id), keys.usage_window(agent_id)
        resources = [r for r, _ in checks]
        pipe = self._r.pipeline(transaction=False)
        pipe.scard(known_key)
        pipe.smismember(known_key, resources)
        known_count, member = await call(pipe.execute())
        known = {r for r, m in zip(resources, member, strict=True) if m}
        flags = new_checks(resources, known, int(known_count), rule)
        pipe = self._r.pipeline(transaction=True)
        if marked:
            pipe.zadd(window_key, {f"{report_id}{keys.MEMBER_SEP}{n}{keys.MEMBER_SEP}{int(f)}":
                                   ms(at) for n, ((_, at), f) in enumerate(
                                       zip(checks, flags, strict=True))})
            pipe.sadd(known_key, *resources)
            pipe.pexpireat(known_key, latest + remember_ms)
            pipe.pexpireat(window_key, latest + window_ms)
        pipe.zremrangebyscore(window_key, "-inf", latest - window_ms)
        pipe.zrangebyscore(window_key, latest - window_ms, "+inf")
        in_window = (await call(pipe.execute()))[-1]
        if not marked:
            return None
        new = sum(1 for m in in_window if m.endswith(b"1"))
        return UsageWindow(len(in_window), new, int(known_count))

    async def cool_down(self, agent_id: str, until: datetime) -> bool:
        """Start the detector's cooldown for the agent; False when one is already running."""
        done = await call(self._r.set(keys.usage_cooldown(agent_id), "1", nx=True,
                                      pxat=ms(until)))
        return bool(done)
