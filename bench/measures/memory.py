"""Benchmark 7: bytes per active grant in Redis and in a resource view, at 100,000 grants.

Imports broker, schemas, redis. The grants are written with the worker's own store calls
(``RedisGrantStore.commit`` then ``mark_published``, the exact writes of a granted request) from
outcomes made by the pure core (``Policy.evaluate`` once for the request shape, ``decide`` per
request); their duration is lengthened to 15 minutes (the policy's default cap) so that all of
them stay active while they are written and measured: bytes do not depend on it. The same
grant events are published to a topic of the grant topic's shape that a fresh GrantView reads;
its Python allocations are counted with tracemalloc.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio as aioredis

from bench import env
from bench.measures.latency import fraud_request
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.kafka import acls
from broker.adapters.kafka.admin import ensure_topics
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import RedisGrantStore
from broker.grants.decide import AgentState, decide
from broker.policy import RiskContext, load_policy
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics

AGENTS = 10_000  # 100,000 grants = 10 per agent
CONCURRENCY = 100  # requests in flight (one Redis connection each)
# Grants the harness (an agent's user) writes for a resource view (a service's) to read.
MEM_TOPIC = dataclasses.replace(env.RAW_OUT, name="bench.mem.grants", writers=(topics.AGENT,),
                                readers=(topics.SERVICE,))


async def commit_grants(settings: Any, n: int, agent_of: Callable[[int], str],
                        publish: Callable[[list[Any]], None] | None = None
                        ) -> list[tuple[str, str, str]]:
    """Commit n grants (the i-th to ``agent_of(i)``) with the worker's store calls; hand each
    batch of grant events to ``publish``; return a few (agent, gid, rid)."""
    policy = load_policy(settings.policy_path)
    profile = policy.agent(env.agent_id("lat", 0))
    template = fraud_request(env.agent_id("lat", 0))
    now = datetime.now(UTC)
    evaluation = dataclasses.replace(
        policy.evaluate(template, profile, RiskContext(request=0.93), now), duration_s=900)
    # The worker's 2 s socket timeouts would fail a fill of 100 connections on a starved
    # machine; bytes do not depend on how patient the client is.
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=60.0,
                                     socket_connect_timeout=60.0)
    store = RedisGrantStore(client, margin_s=settings.record_margin_s)
    sample: list[tuple[str, str, str]] = []

    async def one(i: int) -> Any:
        req = template.model_copy(update={"request_id": f"req-{uuid.uuid4()}",
                                          "agent_id": agent_of(i)})
        out = decide(req, evaluation, agent=profile, state=AgentState(), received_at=now, now=now)
        committed = await store.commit(out, received_at=now, now=now,
                                       max_grant_s=policy.max_grant_duration_s)
        await store.mark_published(out.decision, received_at=now,
                                   max_grant_s=policy.max_grant_duration_s)
        if i % 10_000 == 0 and out.grant is not None:
            sample.append((req.agent_id, out.grant.grant_id, req.request_id))
        return committed.grant

    try:
        for start in range(0, n, CONCURRENCY):
            todo = range(start, min(n, start + CONCURRENCY))
            grants = await asyncio.gather(*(one(i) for i in todo))
            if publish is not None:
                publish(grants)
    finally:
        await store.aclose()
    return sample


async def _fill(settings: Any, n: int, harness: Publisher) -> list[tuple[str, str, str]]:
    """Commit n grants through the store; publish their events; return a few (agent, gid, rid)."""
    sign = RecordSigner(BrokerKeyring(settings.key_path("broker")))  # as the worker signs
    return await commit_grants(
        settings, n, lambda i: f"bench-mem-{i % AGENTS:05d}",
        lambda grants: harness.publish_many(MEM_TOPIC.name,
                                            [sign(encode(g, source="/bench")) for g in grants]))


def index_bytes(client: redis.Redis) -> int:
    """MEMORY USAGE of every shard of the expiry index, exact (not sampled)."""
    return sum(client.memory_usage(k, samples=0) or 0 for k in keys.expiry_indexes())


def key_breakdown(client: redis.Redis, sample: list[tuple[str, str, str]],
                  n: int, index_before: int = 0) -> dict[str, float]:
    """MEMORY USAGE of each key kind a grant costs (averaged over the sample); the expiry
    index's growth (from ``index_before``) over the n grants (it holds other grants too)."""
    kinds: dict[str, list[int]] = {"grant": [], "life": [], "decision": [],
                                   "published (legacy key)": [],
                                   "index (per agent, / grants per agent)": []}
    for agent, gid, rid in sample:
        kinds["grant"].append(client.memory_usage(keys.grant(agent, gid)) or 0)
        kinds["life"].append(client.memory_usage(keys.life(agent, gid)) or 0)
        kinds["decision"].append(client.memory_usage(keys.decision(agent, rid)) or 0)
        # 0 since the published flag lives in the decision record (broker/adapters/redis/records.py)
        kinds["published (legacy key)"].append(client.memory_usage(keys.published(agent, rid)) or 0)
        kinds["index (per agent, / grants per agent)"].append(
            (client.memory_usage(keys.index(agent)) or 0) // (n // AGENTS))
    out = {k: sum(v) / len(v) for k, v in kinds.items() if v}
    out["expiry index (sharded zsets, growth / grants)"] = \
        (index_bytes(client) - index_before) / n
    return out


def redis_memory(settings: Any, harness: Publisher, n: int) -> dict[str, Any]:
    """Used memory before/after n grants, bytes per grant, and the per-key breakdown."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        admin = role_access(settings, topics.ADMIN)
        ensure_topics(admin, (MEM_TOPIC,))
        acls.apply(admin, acls.topic_acls(MEM_TOPIC))
        before = int(client.info("memory")["used_memory"])
        keys_before, index_before = int(client.dbsize()), index_bytes(client)
        sample = asyncio.run(_fill(settings, n, harness))
        after = int(client.info("memory")["used_memory"])
        return {"grants": n, "used_memory_before": before, "used_memory_after": after,
                "keys_added": int(client.dbsize()) - keys_before,
                "bytes_per_grant": (after - before) / n,
                "breakdown": key_breakdown(client, sample, n, index_before)}
    finally:
        client.close()


def view_memory(settings: Any, n: int) -> dict[str, Any]:
    """Python bytes a fresh GrantView holds after reading the n grants (tracemalloc)."""
    service = role_access(settings, topics.SERVICE)
    keys = JwksView.from_settings(settings, service)  # the view verifies every record it applies
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    view = GrantView(service, trust=keys.trust, topic=MEM_TOPIC.name)
    try:
        if not view.wait_ready(timeout=600):
            raise RuntimeError("the memory view did not catch up within 10 minutes")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - base
        by_module = by_component(tracemalloc.take_snapshot(), n)
    finally:
        tracemalloc.stop()
        view.close()
        keys.close()
    return {"grants": n, "bytes_held": held, "bytes_per_grant": held / n,
            "bytes_per_grant_by_module": by_module}


def by_component(snapshot: tracemalloc.Snapshot, n: int, top: int = 6) -> dict[str, float]:
    """Bytes per grant by the module that allocated them (the largest ``top``; the rest
    summed): where a view's memory goes, e.g. the index's held grants and maps."""
    stats = snapshot.statistics("filename")
    out: dict[str, float] = {}
    for stat in stats[:top]:
        name = stat.traceback[0].filename.split("site-packages/")[-1]
        out[name.removeprefix(f"{env.ROOT}/")] = round(stat.size / n, 1)
    rest = sum(stat.size for stat in stats[top:])
    out["(everything else)"] = round(rest / n, 1)
    return out
