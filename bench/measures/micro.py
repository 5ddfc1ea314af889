"""Benchmarks 4 and 5: check latency at the resource side, and policy decisions.

Imports broker, schemas, pyjwt, redis and the optional OPA peer. In-process arms are timed in
batches of ``PER_BATCH`` calls (the figure is the per-call mean of one batch, so the clock's own
cost stays out of sub-microsecond numbers); Redis arms are timed call by call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import redis.asyncio as aioredis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import peers
from bench.stats import Arm
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import RedisGrantStore
from broker.sdk.resource.view import GrantView

PER_BATCH = 10
FREEZE = "payments:accounts.freeze"


def batches(fn: Callable[[], object], count: int) -> list[float]:
    """Microseconds per call, one figure per batch of PER_BATCH calls."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(count):
        t0 = clock()
        for _ in range(PER_BATCH):
            fn()
        out.append((clock() - t0) / PER_BATCH / 1000.0)
    return out


async def per_call(fn: Callable[[], Any], count: int) -> list[float]:
    """Microseconds of each awaited call."""
    clock = time.perf_counter_ns
    out = []
    for _ in range(count):
        t0 = clock()
        await fn()
        out.append((clock() - t0) / 1000.0)
    return out


def dict_table(grants: dict[str, tuple[tuple[str, ...], tuple[str, ...], float]]) -> Callable[
        [str, str, str], bool]:
    """The floor of a local check: one dict lookup and a clock read, no reason, no lock."""
    table = {agent: {(s, r): exp for s in scopes for r in resources}
             for agent, (scopes, resources, exp) in grants.items()}

    def check(agent: str, scope: str, resource: str) -> bool:
        exp = table.get(agent, {}).get((scope, resource))
        return exp is not None and exp > time.time()

    return check


def grant_token() -> tuple[dict[str, Any], tuple[Callable[[], object], Callable[[], object]]]:
    """A 7-claim grant-like token; verify functions for HS256 and EdDSA with pyjwt."""
    now = datetime.now(UTC)
    claims = {"sub": "bench-chk-0000", "iss": "permbroker", "aud": "payments",
              "scope": f"{FREEZE} crm:customer.pii.read", "res": "acct-4411-0923",
              "iat": now, "exp": now + timedelta(minutes=5)}
    secret = "bench-secret-bench-secret-bench-secret!"
    hs = jwt.encode(claims, secret, algorithm="HS256")
    key = Ed25519PrivateKey.generate()
    ed = jwt.encode(claims, key, algorithm="EdDSA")
    pub = key.public_key()
    return claims, (
        lambda: jwt.decode(hs, secret, algorithms=["HS256"], audience="payments",
                           issuer="permbroker"),
        lambda: jwt.decode(ed, pub, algorithms=["EdDSA"], audience="payments",
                           issuer="permbroker"),
    )


CHECK_ARMS = {
    "view": ("GrantView.allows() (local view)", "us"),
    "dict": ("plain dict lookup + clock read", "us"),
    "opa_check": ("OPA in-process: same check in Rego", "us"),
    "store": ("RedisGrantStore.check()", "us"),
    "get": ("raw redis.asyncio GET of the grant key", "us"),
    "jwt_hs": ("pyjwt decode, HS256 (reference only)", "us"),
    "jwt_ed": ("pyjwt decode, EdDSA (reference only)", "us"),
}


async def _redis_arms(store: RedisGrantStore, client: aioredis.Redis, agent: str, gid: str,
                      resource: str, count: int) -> tuple[list[float], list[float]]:
    gkey = keys.grant(agent, gid)
    checked = await per_call(lambda: store.check(agent, FREEZE, resource, datetime.now(UTC)),
                             count)
    got = await per_call(lambda: client.get(gkey), count)
    return checked, got


def check_rounds(view: GrantView, live: dict[str, tuple[tuple[str, ...], tuple[str, ...], float]],
                 agent: str, gid: str, redis_url: str, rounds: int, say: Any) -> dict[str, Arm]:
    """Bench 4: every arm once per round on the same live grant of ``agent``."""
    arms = {k: Arm(name, unit) for k, (name, unit) in CHECK_ARMS.items()}
    _scopes, resources, _exp = live[agent]
    res = resources[0]
    if not view.allows(agent, FREEZE, res).allowed:
        raise RuntimeError(f"the view does not allow {agent}'s grant")
    floor = dict_table(live)
    engine, why = peers.opa_engine()
    opa_input = None
    if engine is not None:
        peers.load_rego(engine, "check")
        engine.add_data({"grants": {a: [{"scopes": list(s), "resources": list(r),
                                          "expires_ms": int(e * 1000)}]
                                    for a, (s, r, e) in live.items()}})
        opa_input = {"agent": agent, "scope": FREEZE, "resource": res}
        if engine.eval_document("permbroker.check.allow",
                                {**opa_input, "now_ms": int(time.time() * 1000)}) is not True:
            raise RuntimeError("the Rego check does not allow the live grant")
    else:
        arms["opa_check"].notes = why
    _claims, (hs, ed) = grant_token()
    loop = asyncio.new_event_loop()
    store = RedisGrantStore.from_url(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    try:
        for r in range(rounds):
            arms["view"].add_round(batches(lambda: view.allows(agent, FREEZE, res), 3000))
            arms["dict"].add_round(batches(lambda: floor(agent, FREEZE, res), 3000))
            if engine is not None:
                arms["opa_check"].add_round(batches(lambda: engine.eval_document(
                    "permbroker.check.allow",
                    {**opa_input, "now_ms": int(time.time() * 1000)}), 150))
            checked, got = loop.run_until_complete(
                _redis_arms(store, client, agent, gid, res, 1000))
            arms["store"].add_round(checked)
            arms["get"].add_round(got)
            arms["jwt_hs"].add_round(batches(hs, 100))
            arms["jwt_ed"].add_round(batches(ed, 50))
            say(f"check round {r + 1}/{rounds}: view p50 {arms['view'].round_stat(r, 50):.2f} us, "
                f"dict {arms['dict'].round_stat(r, 50):.2f} us")
    finally:
        loop.run_until_complete(store.aclose())
        loop.run_until_complete(client.aclose())
        loop.close()
        if engine is not None:
            engine.close()
    return arms
