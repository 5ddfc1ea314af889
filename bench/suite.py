"""The whole run: stack, worker(s), raw loop, observers, every benchmark, sections of the report.

Imports broker, schemas and the bench's modules. Order: latency (1-3, 9), checks (4), the HTTP
check (11), policy (5), signing and verifying (10), expiry (8), throughput (6, a second worker
joins at the end), the cost curve (12, 100,000 agents and grants), memory (7, 100,000 grants,
last because it fills Redis).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import env, peers, sections
from bench.measures import (
    cost as b_cost,
)
from bench.measures import (
    expiry as b_expiry,
)
from bench.measures import (
    http as b_http,
)
from bench.measures import (
    latency as b_latency,
)
from bench.measures import (
    memory as b_memory,
)
from bench.measures import (
    micro as b_micro,
)
from bench.measures import (
    policy as b_policy,
)
from bench.measures import (
    tput as b_tput,
)
from bench.measures import (
    trust as b_trust,
)
from bench.observe import FloorPipe, KeyWatch, ViewEvents
from bench.profile import Profile, top_frames
from bench.report import Section
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark does (``--quick`` shrinks everything)."""

    rounds: int = 5
    latency_n: int = 200
    revocations: int = 40
    expiry_grants: int = 1000
    tput_k: int = 1000
    grants: int = 100_000
    http_n: int = 300
    http_k: int = 1000
    cost_n: int = 200
    cost_k: int = 1000
    cost_scale: int = 1  # the cost curve's levels divided by this


def _open_rig(s: Settings, bao: peers.Bao | None) -> b_latency.Rig:
    watch = KeyWatch(s.redis_url)
    floor = FloorPipe(role_access(s, topics.WORKER), s.redis_url, env.FLOOR.name)
    seen = ViewEvents()
    service = role_access(s, topics.SERVICE)
    view = GrantView(service, trust=JwksView.from_settings(s, service).trust,
                     on_event=seen.on_event)
    if not view.wait_ready(60):
        raise RuntimeError("the bench's grant view did not catch up")
    return b_latency.Rig(s, watch, floor, view, seen,
                         harness=env.signing_publisher(s, "/bench"), bao=bao)


def _close_rig(rig: b_latency.Rig) -> None:
    for c in rig.clients.values():
        c.close()
    rig.view.close()
    rig.floor.close()
    rig.watch.close()


def _start_bao(s: Settings, say: Any) -> tuple[peers.Bao | None, str]:
    binary, why = peers.bao_binary()
    if binary is None:
        return None, why
    try:
        return peers.Bao(binary, s.redis_port + 100, s.stack_dir / "bao.log"), why
    except (OSError, RuntimeError) as exc:
        say(f"OpenBao did not start: {exc}")
        return None, f"OpenBao peer unavailable: the dev server did not start ({exc})"


WARM_BATCH, WARM_MAX = 100, 10  # samples per arm per warm-up batch, at most this many batches
WARM_JIT_SHARE = 0.15  # Kafka is warm once its JIT used less than this share of its CPU


def _warm_up(rig: b_latency.Rig) -> None:
    """Connections, metadata and code paths warm before anything is recorded, Kafka's included.

    A fresh Kafka JVM compiles its request paths (C2) during its first thousand or so requests
    of each kind, at up to one core: measured, that compile time would be charged to the first
    round's requests and slow the processes sharing the machine. Each arm runs in batches until
    a batch leaves Kafka's JIT compiler threads under ``WARM_JIT_SHARE`` of Kafka's CPU.
    """
    kafka = rig.pids["kafka"]
    jit0, cpu0 = env.jit_cpu_seconds(kafka), env.cpu_seconds(kafka)
    batches = 0
    while batches < WARM_MAX:
        jit, cpu = env.jit_cpu_seconds(kafka), env.cpu_seconds(kafka)
        b_latency.subject_round(rig, WARM_BATCH)
        b_latency.raw_round(rig, WARM_BATCH)
        b_latency.floor_round(rig, WARM_BATCH)
        batches += 1
        spent = env.cpu_seconds(kafka) - cpu
        if env.jit_cpu_seconds(kafka) - jit < WARM_JIT_SHARE * spent:
            break
    rig.warm_up = {"samples per arm": batches * WARM_BATCH,
                   "kafka CPU s": round(env.cpu_seconds(kafka) - cpu0, 2),
                   "of which JIT compiler threads": round(env.jit_cpu_seconds(kafka) - jit0, 2)}


def _checks(rig: b_latency.Rig, s: Settings, sz: Sizes, say: Any) -> Section:
    agent = env.agent_id("chk", 0)
    _r, _v, gid = b_latency.escalate(rig, agent)
    live = {agent: ((b_latency.FREEZE, b_latency.PII), b_latency.ACCOUNTS, rig.seen.expiry[gid])}
    for i in range(1000):  # a table of realistic size for the dict floor and OPA's data
        live[f"other-{i}"] = live[agent]
    arms = b_micro.check_rounds(rig.view, live, agent, gid, s.redis_url, sz.rounds, say)
    return sections.checks(arms)


def _http(s: Settings, sz: Sizes, say: Any) -> Section:
    """Section 11, on the live grant that section 4 checked."""
    arms = b_http.http_rounds(s, env.agent_id("chk", 0), b_latency.FREEZE, b_latency.ACCOUNTS[0],
                              sz.rounds, sz.http_n, sz.http_k, say)
    return sections.http(arms)


def _throughput(rig: b_latency.Rig, s: Settings, sz: Sizes, w1: Any, raw_pid: int,
                sealer: Any, say: Any) -> Section:
    arms = b_tput.new_arms()
    assert rig.harness is not None
    pids = {**env.stack_pids(s), "raw loop": raw_pid, "worker 1": w1.pid,
            "sealer": sealer.pid}
    profile = Profile(w1.pid, s.stack_dir / "worker-profile.txt")
    cpu = b_tput.phase(rig.watch, rig.harness, (arms["w1"], arms["raw1"]), sz.rounds,
                       sz.tput_k, say, s.redis_url, pids)
    frames = top_frames(profile.stop())
    rss: dict[str, int] = {"worker 1, one worker": env.rss_bytes(w1.pid)}
    with env.worker(s, "worker2") as w2:
        cpu |= b_tput.phase(rig.watch, rig.harness, (arms["w2"], arms["raw2"]), sz.rounds,
                            sz.tput_k, say, s.redis_url, {**pids, "worker 2": w2.pid})
        rss["worker 1, two workers"] = env.rss_bytes(w1.pid)
        rss["worker 2"] = env.rss_bytes(w2.pid)
    sec = sections.throughput(arms, rss, cpu)
    title = ("Worker 1's top 15 functions by self samples (py-spy, 100 Hz, through the "
             "one-worker arm's rounds, raw-loop batches included)")
    sec.tables[title] = frames
    if profile.why or not frames:
        sec.notes.append(f"no worker profile: {profile.why or 'py-spy took no samples'}")
    return sec


def _cost(rig: b_latency.Rig, s: Settings, sz: Sizes, w1: Any, say: Any) -> Section:
    points = b_cost.curve(rig, s, w1.pid, sz.cost_n, sz.cost_k, say,
                          lambda: env.worker(s, "worker2", register=False), sz.cost_scale)
    return sections.cost(points, b_cost.chart(points))


def run(sz: Sizes, say: Any, out: list[Section], facts: dict[str, Any]) -> None:
    """Run every benchmark on a fresh bench stack, appending report sections to ``out`` as each
    completes (so a run that fails part way still reports what it measured)."""
    with env.bench_stack(say) as s, env.worker(s) as w1, env.sealer(s) as sealer, \
            env.RawLoop(s) as raw:
        facts["worker_rss_start"] = env.rss_bytes(w1.pid)
        bao, bao_why = _start_bao(s, say)
        rig = _open_rig(s, bao)
        rig.pids = {**env.stack_pids(s), "worker 1": w1.pid, "sealer": sealer.pid,
                    "raw loop": raw.pid, "bench driver (views)": os.getpid()}
        rig.metrics_port = s.metrics_port
        try:
            _warm_up(rig)
            jit = env.jit_cpu_seconds(rig.pids["kafka"])
            arms = b_latency.run_rounds(rig, sz.rounds, sz.latency_n, sz.revocations, say)
            rig.warm_up["kafka JIT CPU s during the latency rounds"] = \
                round(env.jit_cpu_seconds(rig.pids["kafka"]) - jit, 2)
            out += sections.latency(arms, rig, bao_why if bao is None else "")
            out.append(_checks(rig, s, sz, say))
            out.append(_http(s, sz, say))
            p_arms, verdict = b_policy.policy_rounds(sz.rounds, say)
            out.append(sections.policy(p_arms, verdict))
            out.append(sections.trust(b_trust.trust_rounds(sz.rounds, say)))
            assert rig.harness is not None
            e_arms = b_expiry.expiry_run(rig.watch, rig.seen, rig.view, rig.harness,
                                         s.redis_url, sz.expiry_grants, say)
            out.append(sections.expiry(e_arms))
            out.append(_throughput(rig, s, sz, w1, raw.pid, sealer, say))
            out.append(_cost(rig, s, sz, w1, say))
        finally:
            _close_rig(rig)
            if bao is not None:
                bao.close()
        out.append(_memory(s, sz, w1, say))


def _memory(s: Settings, sz: Sizes, w1: Any, say: Any) -> Section:
    harness = env.signing_publisher(s, "/bench")
    t0 = time.monotonic()
    in_redis = b_memory.redis_memory(s, harness, sz.grants)
    say(f"memory: {sz.grants} grants written in {time.monotonic() - t0:.0f}s, "
        f"{in_redis['bytes_per_grant']:.0f} B each in Redis")
    in_view = b_memory.view_memory(s, sz.grants)
    return sections.memory(in_redis, in_view, env.rss_bytes(w1.pid))


REPORTS = Path(__file__).resolve().parents[1] / "reports"
