"""Benchmark 12: how a decision's latency and CPU grow with the registry, the active grants and
the number of workers (the cost curve), with one table and one chart.

Imports broker, schemas, matplotlib and the bench's modules. The levels are cumulative, on the
bench's own stack: more agents are registered and more grants made active between levels, and
each level is measured with one worker, then two. A level's state is written the way the worker
writes it, without a request per item (100,000 registrations through the worker would take the
run's whole budget):

- **agents**: registry records of new agents, each with a key of its own, signed with the
  broker's key and published to the registry topic by the worker's Kafka user, exactly the
  record the worker writes when an operator registers an agent. Every process that holds the
  registry (the workers among them) reads and verifies them; the level is measured once the
  workers are idle again.
- **grants**: the worker's own store calls (``RedisGrantStore.commit`` then ``mark_published``)
  for the new agents, as benchmark 7 writes them (``memory.commit_grants``), lasting 15 minutes
  so every one stays active through the curve.

The requests come from the bench's pools: sequential escalations from the latency pool (p50,
p99 to the grant in Redis), then one throughput batch from the throughput pool, with the raw
loop's batch next to it as the same-moment reference, and the workers' CPU over the batch.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import redis

from bench import env
from bench.measures import latency as b_latency
from bench.measures import tput as b_tput
from bench.measures.memory import commit_grants
from bench.stats import percentile
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AgentKey, AgentRecord

# (agents added to the registry so far, grants made active so far): cumulative levels.
LEVELS = ((1_000, 1_000), (100_000, 1_000), (100_000, 100_000))
SEEDED = "bench-cc-"
SOURCE = "/permbroker/worker/bench-seed"
LAPSE_S = 25  # the fraud policy grants the bench's requests 20 s
QUIET_CPU = 0.15  # a worker is idle again below this share of one core over a second


@dataclass
class Point:
    """One measured point of the curve."""

    level: int  # index into LEVELS
    agents: int  # records in the registry
    grants: int  # grants active in Redis as the point began (the level's and the pools' own)
    workers: int
    p50_ms: float
    p99_ms: float
    rate: float  # decisions per second in the throughput batch
    raw_rate: float  # the raw loop's batch, right after
    cpu_ms: float  # the workers' CPU per decision over the batch
    settled_s: float = 0.0  # from the second worker's start until both were idle
    rss_mib: tuple[float, ...] = ()  # each worker's resident memory after the point

    def row(self) -> dict[str, Any]:
        """The point as a report row."""
        return {"agents in the registry": f"{self.agents:,}",
                "active grants": f"{self.grants:,}", "workers": self.workers,
                "p50 ms": f"{self.p50_ms:.2f}", "p99 ms": f"{self.p99_ms:.2f}",
                "decisions/s": f"{self.rate:.0f}", "raw loop /s": f"{self.raw_rate:.0f}",
                "worker / raw loop": f"{self.rate / self.raw_rate:.2f}x",
                "worker CPU ms per decision": f"{self.cpu_ms:.2f}",
                "second worker ready to idle, s": f"{self.settled_s:.0f}" if self.workers > 1
                else "-",
                "workers' RSS, MiB": ", ".join(f"{m:.0f}" for m in self.rss_mib)}


def seeded(first: int, n: int) -> str:
    """The id of the cost curve's agent ``first + n``."""
    return f"{SEEDED}{first + n:06d}"


def seed_agents(settings: Settings, template: AgentRecord, start: int, stop: int) -> None:
    """Registry records of agents ``start``..``stop - 1``, as the worker writes them."""
    sign = RecordSigner(BrokerKeyring(settings.key_path("broker")))
    publisher = Publisher(role_access(settings, topics.WORKER), source=SOURCE)
    now = datetime.now(UTC)
    for first in range(start, stop, 5_000):
        batch = []
        for n in range(first, min(stop, first + 5_000)):
            agent = seeded(0, n)
            key = SigningKey.generate()
            record = template.model_copy(update={
                "agent_id": agent, "profile": template.profile.model_copy(
                    update={"agent_id": agent}),
                "keys": (AgentKey(kid=key.kid, jwk=key.jwk, added_at=now),),
                "revision": 1, "change": "registered", "changed_at": now,
                "registered_at": now, "cause_id": f"evt-{uuid.uuid4()}", "cause_offset": -1,
                "reason": "bench: cost curve"})
            batch.append(sign(encode(record, source=SOURCE)))
        publisher.publish_many(topics.AGENTS.name, batch, timeout=120)


def wait_quiet(pids: list[int], limit_s: float = 600) -> float:
    """Seconds until every one of ``pids`` used under ``QUIET_CPU`` of a core for a second."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        before = [env.cpu_seconds(p) for p in pids]
        time.sleep(1.0)
        if all(env.cpu_seconds(p) - b < QUIET_CPU for p, b in zip(pids, before, strict=True)):
            break
    return time.monotonic() - t0


def measure(rig: b_latency.Rig, n: int, k: int, worker_pids: list[int]) -> tuple[
        list[float], float, float, float]:
    """Latency samples (ms), the workers' rate, the raw loop's rate, CPU ms per decision."""
    assert rig.harness is not None
    b_latency.subject_round(rig, 50)  # warm: a rebalance settled, connections up
    to_redis, _views = b_latency.subject_round(rig, n)
    b_tput.batch_rate(rig.watch, rig.harness, "permbroker.escalations", 200)
    before = sum(env.cpu_seconds(p) for p in worker_pids)
    rate, _stale = b_tput.batch_rate(rig.watch, rig.harness, "permbroker.escalations", k)
    cpu_ms = (sum(env.cpu_seconds(p) for p in worker_pids) - before) * 1000 / k
    raw, _ = b_tput.batch_rate(rig.watch, rig.harness, env.RAW_IN.name, k)
    return to_redis, rate, raw, cpu_ms


def active_grants(redis_url: str) -> int:
    """Grants in the expiry indexes now (every active grant is in one)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(int(client.zcard(k)) for k in keys.expiry_indexes())
    finally:
        client.close()


def curve(rig: b_latency.Rig, s: Settings, w1_pid: int, n: int, k: int, say: Any,
          second_worker: Callable[[], AbstractContextManager[Any]], scale: int = 1
          ) -> list[Point]:
    """Every level (``LEVELS`` divided by ``scale``), one worker then two; the points in
    order."""
    operator = role_access(s, topics.OPERATOR)
    with JwksView.from_settings(s, operator) as jwks:
        registry = read_registry(operator, jwks.trust)
    template = registry.get(env.agent_id("lat", 0))
    if template is None:
        raise RuntimeError("the bench's latency agents are not registered")
    base_agents = registry.count()
    time.sleep(LAPSE_S)  # the throughput benchmark's last grants lapse (their expiries)
    points: list[Point] = []
    agents_done = grants_done = 0
    for level, (agents, grants) in enumerate((a // scale, g // scale) for a, g in LEVELS):
        t0 = time.monotonic()
        if agents > agents_done:
            seed_agents(s, template, agents_done, agents)
        if grants > grants_done:
            asyncio.run(commit_grants(s, grants - grants_done, partial(seeded, grants_done)))
        agents_done, grants_done = agents, grants
        quiet = wait_quiet([w1_pid])
        say(f"cost curve: {agents:,} agents and {grants:,} grants added in "
            f"{time.monotonic() - t0 - quiet:.0f} s; the worker was idle again after {quiet:.0f} s")
        for workers in (1, 2):
            with second_worker() if workers == 2 else nullcontext() as w2:
                pids = [w1_pid] + ([w2.pid] if w2 is not None else [])
                # A joining worker reads the whole registry before it serves its partitions.
                settled = wait_quiet(pids) if w2 is not None else 0.0
                held = active_grants(s.redis_url)
                lat, rate, raw, cpu = measure(rig, n, k, pids)
                rss = tuple(env.rss_bytes(p) / 2**20 for p in pids)
            point = Point(level, base_agents + agents, held, workers, percentile(lat, 50),
                          percentile(lat, 99), rate, raw, cpu, settled, rss)
            points.append(point)
            say(f"cost curve: {point.agents:,} agents, {point.grants:,} grants, {workers} "
                f"worker(s): p50 {point.p50_ms:.2f} ms, p99 {point.p99_ms:.2f} ms, "
                f"{rate:.0f}/s, {cpu:.2f} CPU ms per decision")
    return points


def chart(points: list[Point]) -> bytes:
    """The curve as a PNG: latency and CPU per decision by level, one line per worker count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({p.level for p in points})
    first = {p.level: p for p in reversed(points)}  # each level's first point names it
    labels = [f"{first[lv].agents:,} agents\n{first[lv].grants:,} grants" for lv in levels]
    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for workers, color in ((1, "tab:blue"), (2, "tab:orange")):
        mine = {p.level: p for p in points if p.workers == workers}
        xs = [i for i, lv in enumerate(levels) if lv in mine]
        here = [mine[lv] for lv in levels if lv in mine]
        lat.plot(xs, [p.p50_ms for p in here], "o-", color=color, label=f"p50, {workers} worker(s)")
        lat.plot(xs, [p.p99_ms for p in here], "s--", color=color, alpha=0.6,
                 label=f"p99, {workers} worker(s)")
        cpu.plot(xs, [p.cpu_ms for p in here], "o-", color=color, label=f"{workers} worker(s)")
    for ax, title, unit in ((lat, "escalation -> grant in Redis", "ms"),
                            (cpu, "workers' CPU per decision (throughput batch)", "CPU ms")):
        ax.set_xticks(range(len(levels)), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    return out.getvalue()
