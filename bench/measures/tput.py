"""Benchmark 6: escalations decided per second by one worker, by two, and by the raw loop.

Imports broker, schemas and the bench's observers. A round publishes the same batch shape (K
granted requests over 120 agents, spread over every partition) as fast as the producer can and
times until the last request is decided: for the raw loop its grant is written to Redis, for the
worker its decision record (written in the same atomic step as its grant).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from bench import env
from bench.measures.latency import fraud_request
from bench.observe import KeyWatch
from bench.stats import Arm
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import records
from broker.grants.decide import derive_id

ARMS = {
    "w1": ("one worker process", "/s"),
    "raw1": ("raw loop (reference for one worker)", "/s"),
    "w2": ("two worker processes", "/s"),
    "raw2": ("raw loop (reference for two workers)", "/s"),
}


def batch_rate(watch: KeyWatch, harness: Publisher, topic: str, k: int,
               r: redis.Redis | None = None) -> tuple[float, int]:
    """Escalations per second from the first publish to the last one decided; stale denials.

    The raw loop is timed to its last grant write. The worker is timed to its last decision
    record (written in the same Lua step as a grant): a request still queued when its grant
    would have lapsed is denied as stale (invariant 2), so on an overloaded machine waiting
    for grants alone would wait for ones that never come. Those denials are counted (``r``).
    """
    reqs = [fraud_request(env.agent_id("tput", i % env.POOLS["tput"])) for i in range(k)]
    if topic == env.RAW_IN.name:
        names = [keys.grant(q.agent_id, derive_id("grant", q.request_id, q.agent_id))
                 for q in reqs]
    else:
        names = [keys.decision(q.agent_id, q.request_id) for q in reqs]
    encoded = [encode(q, source=f"/agents/{q.agent_id}") for q in reqs]
    watch.watch(*names)
    t0 = time.perf_counter()
    harness.publish_many(topic, encoded)
    last = max(watch.wait_all(names, timeout=300))
    return k / (last - t0), _not_granted(r, names) if r is not None else 0


def _not_granted(r: redis.Redis, names: list[str]) -> int:
    """How many of these decision records are not grants."""
    out = 0
    for start in range(0, len(names), 500):
        for raw in r.mget(names[start:start + 500]):
            if raw is None or json.loads(records.unpack(raw)[0])["outcome"] != "granted":
                out += 1
    return out


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: env.cpu_seconds(pid) for name, pid in pids.items()}


def _spent(before: dict[str, float], into: dict[str, float], pids: dict[str, int]) -> None:
    for name, now in _cpu(pids).items():
        into[name] = into.get(name, 0.0) + now - before[name]


def phase(watch: KeyWatch, harness: Publisher, arms: tuple[Arm, Arm], rounds: int, k: int,
          say: Any, redis_url: str, pids: dict[str, int]) -> dict[str, dict[str, float]]:
    """Interleaved rounds: the worker(s), then the raw loop, on the same input.

    Returns the CPU seconds each process (``pids``) used per 1,000 requests, during the
    subject's batches and during the raw loop's: where the time goes on a 2-core machine.
    """
    subject, ref = arms
    r = redis.Redis.from_url(redis_url)
    denied = 0
    cpu: dict[str, dict[str, float]] = {subject.name: {}, ref.name: {}}
    try:
        batch_rate(watch, harness, env.RAW_IN.name, 200)  # warm-up, not recorded
        batch_rate(watch, harness, "permbroker.escalations", 200)
        for i in range(rounds):
            before = _cpu(pids)
            rate, stale = batch_rate(watch, harness, "permbroker.escalations", k, r)
            _spent(before, cpu[subject.name], pids)
            subject.add_round([rate])
            denied += stale
            before = _cpu(pids)
            ref.add_round([batch_rate(watch, harness, env.RAW_IN.name, k)[0]])
            _spent(before, cpu[ref.name], pids)
            say(f"throughput {subject.name}, round {i + 1}/{rounds}: "
                f"{subject.rounds[-1][0]:.0f}/s vs raw {ref.rounds[-1][0]:.0f}/s"
                + (f" ({stale} of {k} denied as stale)" if stale else ""))
    finally:
        r.close()
    if denied:
        subject.notes = (f"{denied} of {rounds * k} requests were decided only after their "
                         "20 s grant would have lapsed and were denied as stale (overloaded)")
    per_k = 1000 / (rounds * k)
    return {arm: {p: round(s * per_k, 3) for p, s in spent.items()} for arm, spent in cpu.items()}


def new_arms() -> dict[str, Arm]:
    """The four throughput arms."""
    return {key: Arm(name, unit) for key, (name, unit) in ARMS.items()}
