"""Benchmark 6: escalations decided per second by one worker, by two, and by the raw loop.

Imports broker, schemas and the bench's observers. A round publishes the same batch shape (K
granted requests over 120 agents, spread over every partition) as fast as the producer can and
times until the last grant is written to Redis; "decided" means the grant is readable there.
"""

from __future__ import annotations

import time
from typing import Any

from bench import env
from bench.b_latency import fraud_request
from bench.observe import KeyWatch
from bench.stats import Arm
from broker.adapters import keys
from broker.adapters.bus import Publisher
from broker.adapters.codec import encode
from broker.grants import derive_id

ARMS = {
    "w1": ("one worker process", "/s"),
    "raw1": ("raw loop (reference for one worker)", "/s"),
    "w2": ("two worker processes", "/s"),
    "raw2": ("raw loop (reference for two workers)", "/s"),
}


def batch_rate(watch: KeyWatch, harness: Publisher, topic: str, k: int) -> float:
    """Escalations per second from the first publish to the last grant written."""
    reqs = [fraud_request(env.agent_id("tput", i % env.POOLS["tput"])) for i in range(k)]
    gkeys = [keys.grant(r.agent_id, derive_id("grant", r.request_id, r.agent_id)) for r in reqs]
    encoded = [encode(r, source=f"/agents/{r.agent_id}") for r in reqs]
    watch.watch(*gkeys)
    t0 = time.perf_counter()
    harness.publish_many(topic, encoded)
    last = max(watch.wait_all(gkeys, timeout=300))
    return k / (last - t0)


def phase(watch: KeyWatch, harness: Publisher, arms: tuple[Arm, Arm], rounds: int, k: int,
          say: Any) -> None:
    """Interleaved rounds: the worker(s), then the raw loop, on the same input."""
    subject, ref = arms
    batch_rate(watch, harness, env.RAW_IN.name, 200)  # warm-up, not recorded
    batch_rate(watch, harness, "permbroker.escalations", 200)
    for r in range(rounds):
        subject.add_round([batch_rate(watch, harness, "permbroker.escalations", k)])
        ref.add_round([batch_rate(watch, harness, env.RAW_IN.name, k)])
        say(f"throughput {subject.name}, round {r + 1}/{rounds}: "
            f"{subject.rounds[-1][0]:.0f}/s vs raw {ref.rounds[-1][0]:.0f}/s")


def new_arms() -> dict[str, Arm]:
    """The four throughput arms."""
    return {key: Arm(name, unit) for key, (name, unit) in ARMS.items()}
