"""From measured arms to report sections: the ratio lines and each target of the benchmarks.

Imports the bench's stats and report types only.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from bench.report import Section
from bench.stats import Arm, Line, Target, ratio_lines


def latency(arms: dict[str, Arm], rig: Any, bao_missing: str) -> list[Section]:
    """Sections 1, 2, 3 and 9 from the latency rounds."""
    s, r, f, rtt = arms["S_redis"], arms["R"], arms["F"], arms["RTT"]
    one = Section("1", "1. Escalation -> grant visible in Redis", [s, r, f])
    one.lines = ratio_lines("1", s, r, label="worker / raw loop",
                            p50_target=Target("<= 2x", 2.0), p99_target=Target("<= 3x", 3.0))
    one.lines += ratio_lines("1", s, f, label="worker / floor")
    one.extra["CPU ms per request, by process, during each latency arm's rounds"] = \
        rig.cpu_ms_per_request()
    one.extra["Warm-up before the rounds (not recorded; each arm until Kafka's JIT settled)"] = \
        rig.warm_up
    one.lines += [Line("1", "worker p50 (absolute)", s.pooled(50), "ms", "all rounds pooled",
                       target=Target("<= 2 ms", 2.0)),
                  Line("1", "worker p99 (absolute)", s.pooled(99), "ms", "all rounds pooled",
                       target=Target("<= 10 ms", 10.0))]
    two = Section("2", "2. Escalation -> grant seen by a resource-side view", [arms["S_view"], rtt])
    two.lines = ratio_lines("2", arms["S_view"], rtt, label="view / 2x Kafka RTT", den_scale=2.0)
    three = Section("3", "3. Revocation propagation to a resource view",
                    [arms["V"], arms["V_applied"], rtt])
    three.lines = ratio_lines("3", arms["V"], rtt, label="revocation / Kafka RTT",
                              p99_target=Target("<= 1.5x", 1.5))
    three.lines.append(Line("3", "false allows once the view applied the revocation",
                            rig.false_allows,
                            "", f"{rig.checks_after} checks", target=Target("= 0", 0.0)))
    three.notes.append("A revocation sample: grant a fresh agent through the worker, wait until "
                       "the view allows it, publish a behaviour_anomaly signal with the agent SDK, "
                       "check the view every ~0.1 ms until it denies, then check 50 more times. "
                       "Every check that began with the view's applied offset at or past the "
                       "revocation's offset (on its partition) counts toward the false allows, "
                       "also those before the first denied check.")
    nine = Section("9", "9. Peer: central issuer (OpenBao) next to our grant and revocation",
                   [arms["B_create"], arms["B_revoke"]])
    if bao_missing:
        nine.notes.append(bao_missing)
    else:
        nine.lines = ratio_lines("9", s, arms["B_create"], label="our grant / OpenBao create")
        nine.lines += ratio_lines("9", arms["V"], arms["B_revoke"],
                                  label="our revocation / OpenBao revoke")
        nine.notes.append("OpenBao's figures are one synchronous HTTP call each on a kept-alive "
                          "connection to a dev server with in-memory storage (optimistic); ours "
                          "cross Kafka twice (grant) or three times (revocation, to the view).")
    return [one, two, three, nine]


def checks(arms: dict[str, Arm]) -> Section:
    """Section 4."""
    sec = Section("4", "4. Check latency at the resource side", list(arms.values()))
    sec.lines = ratio_lines("4", arms["view"], arms["dict"], label="view / dict lookup",
                            p50_target=Target("<= 3x", 3.0))
    if any(arms["opa_check"].rounds):
        sec.lines += ratio_lines("4", arms["opa_check"], arms["view"], label="OPA / view",
                                 p50_target=Target(">= 10x", 10.0, at_least=True))
    else:
        sec.notes.append(arms["opa_check"].notes)
    sec.lines += ratio_lines("4", arms["store"], arms["get"], label="Redis check / raw GET")
    sec.notes.append("In-process arms are per-call means of batches of 10 calls (p99 is over "
                     "batches); Redis arms are single awaited calls on one event loop.")
    return sec


def http(arms: dict[str, Arm]) -> Section:
    """Section 11: the API's check next to a trivial endpoint of the same process."""
    sec = Section("11", "11. /v1/check over HTTP next to a trivial FastAPI endpoint",
                  list(arms.values()))
    ratio = [a[0] / t[0] for a, t in zip(arms["api_tput"].rounds, arms["triv_tput"].rounds,
                                         strict=False)]
    sec.lines = [Line("11", "/v1/check / trivial throughput", statistics.median(ratio)
                      if ratio else math.nan, "x", arms["triv_tput"].name, ratio,
                      Target(">= 0.5x", 0.5, at_least=True))]
    sec.lines += ratio_lines("11", arms["api_lat"], arms["triv_lat"], label="/v1/check / trivial",
                             p99_target=Target("<= 3x", 3.0))
    sec.notes.append("Both apps run on uvicorn in one process (bench/httpapi.py); the trivial "
                     "endpoint (async def, no thread hop) parses the same body into the same "
                     "model and returns a constant. "
                     "Every call carries its own assertion, minted before the timed batch, so "
                     "the API verifies a signature each time. Latency: one keep-alive "
                     "connection, sequential calls; throughput: 8 keep-alive connections.")
    return sec


def policy(arms: dict[str, Arm], verdict: str) -> Section:
    """Section 5."""
    sec = Section("5", "5. Policy decision (fraud policy, compiled once)", list(arms.values()))
    if any(arms["opa"].rounds):
        sec.lines = ratio_lines("5", arms["policy"], arms["opa"], label="ours / OPA",
                                p50_target=Target("< 1x (faster)", 1.0))
    sec.lines += ratio_lines("5", arms["policy"], arms["predicate"], label="ours / predicate")
    sec.notes.append(verdict)
    return sec


def throughput(arms: dict[str, Arm], rss: dict[str, int],
               cpu: dict[str, dict[str, float]]) -> Section:
    """Section 6: per-worker ratio and two-worker scaling, both normalised by the raw loop."""
    sec = Section("6", "6. Throughput: escalations decided per second", list(arms.values()))
    one = [w[0] / r[0] for w, r in zip(arms["w1"].rounds, arms["raw1"].rounds, strict=False)]
    two = [w[0] / r[0] for w, r in zip(arms["w2"].rounds, arms["raw2"].rounds, strict=False)]
    scale = [b / a for a, b in zip(one, two, strict=False)]
    med = statistics.median
    sec.lines = [
        Line("6", "one worker / raw loop", med(one) if one else math.nan, "x", "raw loop",
             one, Target(">= 0.5x", 0.5, at_least=True)),
        Line("6", "two workers / one worker", med(scale) if scale else math.nan, "x",
             "each normalised by its round's raw loop", scale, Target(">= 1.6x", 1.6, True)),
    ]
    sec.extra["worker RSS (bytes)"] = rss
    sec.extra["CPU seconds per 1,000 requests, by process, during each arm's batches"] = cpu
    sec.notes += [a.notes for a in (arms["w1"], arms["w2"]) if a.notes]
    return sec


def expiry(arms: dict[str, Arm]) -> Section:
    """Section 8."""
    sec = Section("8", "8. Expiry accuracy (1,000 short grants)", list(arms.values()))
    for key, arm in arms.items():
        worst = max((max(r) for r in arm.rounds if r), default=math.nan)
        sec.lines.append(Line("8", f"{key}: longest allowed after expiry", worst, "ms",
                              f"{sum(len(r) for r in arm.rounds)} grants"))
    sec.notes.append("0 means no check made after expires_at was ever allowed. Each path is "
                     "checked from 2 ms before until it denies; the clock is the machine's.")
    return sec


def memory(in_redis: dict[str, Any], in_view: dict[str, Any], worker_rss: int) -> Section:
    """Section 7."""
    sec = Section("7", "7. Memory at 100,000 active grants")
    sec.lines = [
        Line("7", "Redis bytes per active grant", in_redis["bytes_per_grant"], "B",
             "used_memory delta / grants", target=Target("<= 200 B", 200.0)),
        Line("7", "view bytes per active grant", in_view["bytes_per_grant"], "B",
             "tracemalloc, Python heap", target=Target("<= 500 B", 500.0)),
        Line("7", "worker resident memory", worker_rss / 2**20, "MiB",
             "VmRSS, after the cost curve (its registry holds the curve's agents)"),
    ]
    sec.extra["redis"] = in_redis
    sec.extra["view"] = in_view
    return sec


def cost(points: list[Any], png: bytes) -> Section:
    """Section 12: the cost curve, one row per point, and its chart."""
    sec = Section("12", "12. Cost curve: registered agents, active grants, workers")
    sec.tables["One row per point, in the order measured (levels are cumulative)"] = \
        [p.row() for p in points]
    sec.images["bench-cost.png"] = png
    sec.notes += [
        "Each level adds registry records of new agents (each with its own key, signed with "
        "the broker's key, exactly the record the worker writes for a registration) and grants "
        "committed with the worker's own store calls (15 minutes long, all active through the "
        "curve), then is measured once the worker is idle again, with one worker and with two.",
        "p50/p99: 200 sequential escalations from the latency pool to the grant in Redis. "
        "decisions/s and CPU: one batch of 1,000 from the throughput pool; the raw loop's "
        "batch right after it is the same-moment reference. One sample per point (not "
        "interleaved rounds): read the trend, not the second digit.",
        "A second worker is measured once both workers are idle: a joining worker reads and "
        "verifies the whole registry before it serves the partitions it was given (the last "
        "column: seconds from its readiness to idle).",
    ]
    return sec


def trust(arms: dict[str, Arm]) -> Section:
    """Section 10: the cost of signing and verifying one record."""
    sec = Section("10", "10. Signing and verifying a record, verifying a grant token (in process)",
                  list(arms.values()))
    sec.lines = ratio_lines("10", arms["sign"], arms["encode"], label="signed / unsigned encode")
    sec.lines += ratio_lines("10", arms["verify"], arms["read"], label="verified / unverified read")
    sec.lines += ratio_lines("10", arms["token"], arms["pyjwt"],
                             label="grant token verification / pyjwt decode")
    sign = arms["sign"].pooled(50) - arms["encode"].pooled(50)
    verify = arms["verify"].pooled(50) - arms["read"].pooled(50)
    sec.lines.append(Line("10", "signing cost per record p50", sign, "us",
                          "signed encode - unsigned encode"))
    sec.lines.append(Line("10", "verifying cost per record p50", verify, "us",
                          "verified read - unverified read"))
    sec.notes.append("Every record the broker writes is signed once by the worker and verified "
                     "by each reader that applies it; nothing in the product turns this off. "
                     "Per-call means of batches of 10 calls, one core, no services involved.")
    return sec
