"""Benchmarks 1-3 and 9: escalation -> grant in Redis / at a view, revocation, OpenBao peer.

Imports broker, schemas and the bench's observers. One round runs, in turn: the worker through
the agent SDK (S), the raw loop (R), the floor (F: bare Kafka produce->consume plus one Redis
SET), revocations (V) and, when installed, OpenBao token create/revoke (B). Each sample waits for
the previous one to finish completely (unloaded latency), then leaves a short gap.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from bench import env
from bench.observe import FloorPipe, KeyWatch, ViewEvents, published
from bench.peers import Bao
from bench.stats import Arm
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import Encoded
from broker.adapters.redis import keyspace as keys
from broker.grants.decide import derive_id
from broker.sdk.agent.client import AgentClient
from broker.sdk.operator.client import OperatorClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import EscalationRequested

FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
ACCOUNTS = ("acct-4411-0923", "acct-4411-7710")
GAP_S = 0.003  # idle time between samples, after the previous one completed


def fraud_request(agent: str, duration_s: int = 900) -> EscalationRequested:
    """A request the fraud policy grants (clamped to 20 s by rule fraud-freeze-on-pattern)."""
    return EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=(FREEZE, PII),
        resources=ACCOUNTS, duration_s=duration_s, reason="bench: fraud pattern",
        confidence=0.95, risk_score=0.93, requested_at=datetime.now(UTC))


def ms_since(t0: float, t1: float) -> float:
    """Milliseconds between two perf_counter stamps."""
    return (t1 - t0) * 1000.0


T = TypeVar("T")

@dataclass
class Rig:
    """Everything the latency rounds share: observers, clients, a view."""

    settings: object
    watch: KeyWatch
    floor: FloorPipe
    view: GrantView
    seen: ViewEvents
    clients: dict[str, AgentClient] = field(default_factory=dict)
    publishers: dict[str, Publisher] = field(default_factory=dict)
    harness: Publisher | None = None
    bao: Bao | None = None
    false_allows: int = 0
    checks_after: int = 0
    next_victim: int = 0
    pids: dict[str, int] = field(default_factory=dict)  # every process whose CPU is metered
    cpu_s: dict[str, dict[str, float]] = field(default_factory=dict)  # arm -> process -> s
    cpu_n: dict[str, int] = field(default_factory=dict)  # arm -> requests metered
    warm_up: dict[str, float] = field(default_factory=dict)  # what the warm-up took
    metrics_port: int = 0  # worker 1's /metrics (its stage histograms); 0: not read
    stage_s: dict[str, dict[tuple[str, str], float]] = field(default_factory=dict)

    def metered(self, arm: str, count: int, run: Callable[[], T]) -> T:
        """``run()``, adding the CPU each process used meanwhile to ``arm`` (``count`` requests),
        and the time worker 1's stage histograms gained."""
        before = {name: env.cpu_seconds(pid) for name, pid in self.pids.items()}
        stages = stage_seconds(self.metrics_port)
        out = run()
        spent = self.cpu_s.setdefault(arm, {})
        for name, pid in self.pids.items():
            spent[name] = spent.get(name, 0.0) + env.cpu_seconds(pid) - before[name]
        into = self.stage_s.setdefault(arm, {})
        for key, total in stage_seconds(self.metrics_port).items():
            into[key] = into.get(key, 0.0) + total - stages.get(key, 0.0)
        self.cpu_n[arm] = self.cpu_n.get(arm, 0) + count
        return out

    def stage_rows(self, arm: str) -> list[dict[str, object]]:
        """Where worker 1's time went in ``arm``: one row per stage of the arm's input topic,
        in the path's order, as mean ms per request (``cpu_n``) and share of their sum."""
        topic, order = STAGE_PATHS[arm]
        n = max(self.cpu_n.get(arm, 0), 1)
        ms = {stage: s * 1000 / n for (t, stage), s in self.stage_s.get(arm, {}).items()
              if t == topic and s > 0}
        total = sum(ms.values()) or 1.0
        ranked = sorted(ms, key=lambda st: (order.index(st) if st in order else len(order), st))
        return [{"stage": st, "mean ms per request": round(ms[st], 3),
                 "share": f"{100 * ms[st] / total:.0f} %", "covers": STAGES.get(st, "")}
                for st in ranked]

    def cpu_ms_per_request(self) -> dict[str, dict[str, float]]:
        """arm -> process -> CPU milliseconds per request, over every metered round."""
        return {arm: {name: round(s * 1000 / max(self.cpu_n[arm], 1), 3)
                      for name, s in by.items()} for arm, by in self.cpu_s.items()}

    def client(self, agent: str) -> AgentClient:
        """The agent's own SDK client (one identity, one client)."""
        if agent not in self.clients:
            self.clients[agent] = AgentClient(agent, role_access(self.settings, topics.AGENT),  # type: ignore[arg-type]
                                              watch_decisions=False, trust=self.view.trust,
                                              keys=env.agent_keys(self.settings))  # type: ignore[arg-type]
        return self.clients[agent]

    def publisher(self, agent: str) -> Publisher:
        """A producer configured exactly like the agent SDK's, for the raw loop's input."""
        if agent not in self.publishers:
            self.publishers[agent] = env.signing_publisher(self.settings,  # type: ignore[arg-type]
                                                           f"/agents/{agent}")
        return self.publishers[agent]


# What each stage of the worker's stage histogram covers (streams/telemetry/figures.py).
STAGES = {
    "queued": "from Kafka's append to the handler starting: fetch, faust's hand-over from its "
              "consumer thread, the wait behind the agent's earlier messages",
    "verified": "identity gate: the record's signature, replay nonce, registry",
    "read": "the store snapshot and fence check (the snapshot is read while the gate verifies)",
    "decided": "quota, policy evaluation, the decision and its audit record built",
    "audited": "audit records signed, written and acknowledged by Kafka (an escalation's "
               "before its commit)",
    "committed": "the commit script in Redis",
    "revoked": "the revocation script in Redis (it checks the partition's fence)",
    "published": "the grant or revocation events (and an escalation's decision) signed, "
                 "written and acknowledged",
    "finished": "the rest of the handler (an escalation's mark-published write)",
}
STAGE_PATHS = {  # latency arm -> (the input topic its requests arrive on, its stages in order)
    "escalation (worker)": (topics.ESCALATIONS.name, ["queued", "verified", "read", "decided",
                                                      "audited", "committed", "published",
                                                      "finished"]),
    "revocation": (topics.RISK.name, ["queued", "verified", "revoked", "published", "audited",
                                      "finished"]),
}


def stage_seconds(port: int) -> dict[tuple[str, str], float]:
    """(topic, stage) -> seconds so far in a worker's ``permbroker_worker_stage_seconds``
    histogram, read from its /metrics (empty when ``port`` is 0)."""
    if not port:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return stage_sums(resp.read().decode())


def stage_sums(text: str) -> dict[tuple[str, str], float]:
    """(topic, stage) -> seconds, from a Prometheus text exposition of the stage histogram."""
    return {(s.labels["topic"], s.labels["stage"]): s.value
            for family in text_string_to_metric_families(text)
            if family.name == "permbroker_worker_stage_seconds"
            for s in family.samples if s.name.endswith("_sum")}


def escalate(rig: Rig, agent: str) -> tuple[float, float, str]:
    """Send one request via the SDK; ms until the grant is in Redis and at the view; grant id."""
    req = fraud_request(agent)
    gid = derive_id("grant", req.request_id, agent)
    gkey, done = keys.grant(agent, gid), published(keys.decision(agent, req.request_id))
    rig.watch.watch(gkey, done)
    rig.seen.watch(f"grant:{gid}")
    client = rig.client(agent)  # created (first use) before the clock starts
    t0 = time.perf_counter()
    client.send(req)
    t_redis = rig.watch.wait(gkey)
    t_view = rig.seen.wait(f"grant:{gid}")
    rig.watch.wait(done)  # the worker finished the request (published everything)
    return ms_since(t0, t_redis), ms_since(t0, t_view), gid


def subject_round(rig: Rig, n: int) -> tuple[list[float], list[float]]:
    """n escalations through the worker, round-robin over the latency agents."""
    to_redis, to_view = [], []
    for i in range(n):
        r, v, _gid = escalate(rig, env.agent_id("lat", i % env.POOLS["lat"]))
        to_redis.append(r)
        to_view.append(v)
        time.sleep(GAP_S)
    return to_redis, to_view


def raw_round(rig: Rig, n: int) -> list[float]:
    """n escalations (same bytes, same producer settings) through the raw loop."""
    out = []
    for i in range(n):
        agent = env.agent_id("lat", i % env.POOLS["lat"])
        req = fraud_request(agent)
        gkey = keys.grant(agent, derive_id("grant", req.request_id, agent))
        rig.watch.watch(gkey)
        publisher = rig.publisher(agent)  # created (first use) before the clock starts
        t0 = time.perf_counter()
        publisher.publish(env.RAW_IN.name, req)
        out.append(ms_since(t0, rig.watch.wait(gkey)))
        time.sleep(GAP_S)
    return out


def floor_round(rig: Rig, n: int) -> tuple[list[float], list[float]]:
    """n bare produce->consume round trips, each followed by one Redis SET."""
    assert rig.harness is not None
    rtt, with_set = [], []
    for _ in range(n):
        key = f"pb:{{bench-floor}}:k:{uuid.uuid4().hex}"
        rig.floor.watch(key)
        rig.watch.watch(key)
        t0 = time.perf_counter()
        rig.harness.publish_raw(env.FLOOR.name, Encoded(b"bench-floor", key.encode(), []))
        rtt.append(ms_since(t0, rig.floor.wait(key)))
        with_set.append(ms_since(t0, rig.watch.wait(key)))
        time.sleep(GAP_S)
    return rtt, with_set


def revoke_one(rig: Rig, monitor: OperatorClient) -> tuple[float, float]:
    """Grant a fresh agent, revoke it by a risk signal; ms to the first denied view check.

    Returns (first denied check, view applied the revocation). Afterwards probes the view 50
    more times. Every check that began once the view's applied offset had reached the
    revocation's offset counts: any allow among them is a false allow (a revocation must never
    be undone), also one before the first denial.
    """
    victim = env.agent_id("rev", rig.next_victim)
    rig.next_victim += 1
    escalate(rig, victim)
    if not rig.view.allows(victim, FREEZE, ACCOUNTS[0]).allowed:
        raise RuntimeError(f"the view does not allow {victim}'s fresh grant")
    rig.seen.watch(f"revoked:{victim}")
    checks: list[tuple[bool, bool]] = []  # (revocation applied when it began, allowed)

    def check() -> bool:
        applied = rig.seen.applied_through(victim)
        allowed = rig.view.allows(victim, FREEZE, ACCOUNTS[0]).allowed
        checks.append((applied, allowed))
        return allowed

    t0 = time.perf_counter()
    monitor.report_risk(kind="behaviour_anomaly", severity=0.95, subject_agent_id=victim,
                        detail="bench: out of pattern")
    deadline = t0 + 30
    while check():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"revocation of {victim} never reached the view")
        time.sleep(0.0001)
    t_denied = time.perf_counter()
    t_applied = rig.seen.wait(f"revoked:{victim}")
    for _ in range(50):
        check()
        time.sleep(0.0001)
    made, allowed = after_applied(checks)
    rig.checks_after += made
    rig.false_allows += allowed
    return ms_since(t0, t_denied), ms_since(t0, t_applied)


def after_applied(checks: list[tuple[bool, bool]]) -> tuple[int, int]:
    """(checks that began with the revocation applied by the view, how many of them allowed)."""
    late = [allowed for applied, allowed in checks if applied]
    return len(late), sum(late)


def revoke_round(rig: Rig, monitor: OperatorClient, n: int) -> tuple[list[float], list[float]]:
    """n revocations of freshly granted agents."""
    denied, applied = [], []
    for _ in range(n):
        d, a = revoke_one(rig, monitor)
        denied.append(d)
        applied.append(a)
        time.sleep(GAP_S)
    return denied, applied


def bao_round(bao: Bao, n: int) -> tuple[list[float], list[float], int]:
    """n token creates and n revokes (revoke, then the token's own lookup must be refused)."""
    created, revoked, not_denied = [], [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        token = bao.create_token()
        t1 = time.perf_counter()
        ok = bao.revoke_until_denied(token)
        t2 = time.perf_counter()
        created.append(ms_since(t0, t1))
        revoked.append(ms_since(t1, t2))
        not_denied += 0 if ok else 1
        time.sleep(GAP_S)
    return created, revoked, not_denied


ARMS = {
    "S_redis": ("worker: escalation -> grant in Redis", "ms"),
    "S_view": ("worker: escalation -> grant at a resource view", "ms"),
    "R": ("raw loop: escalation -> grant in Redis", "ms"),
    "F": ("floor: Kafka produce->consume + 1 Redis SET", "ms"),
    "RTT": ("Kafka produce->consume round trip", "ms"),
    "V": ("revocation: risk signal -> first denied view check", "ms"),
    "V_applied": ("revocation: risk signal -> view applied it", "ms"),
    "B_create": ("OpenBao: token create", "ms"),
    "B_revoke": ("OpenBao: token revoke -> lookup refused", "ms"),
}


def run_rounds(rig: Rig, rounds: int, n: int, n_rev: int, say: object) -> dict[str, Arm]:
    """Every arm once per round, in a fixed order (ABCD ABCD ...)."""
    arms = {k: Arm(name, unit) for k, (name, unit) in ARMS.items()}
    # A monitor reports about other agents with operator credentials (an agent's key may
    # only report about itself).
    monitor = OperatorClient(rig.settings,  # type: ignore[arg-type]
                             role_access(rig.settings, topics.OPERATOR))  # type: ignore[arg-type]
    bao_failures = 0
    for r in range(rounds):
        s_redis, s_view = rig.metered("escalation (worker)", n, lambda: subject_round(rig, n))
        arms["S_redis"].add_round(s_redis)
        arms["S_view"].add_round(s_view)
        arms["R"].add_round(rig.metered("raw loop", n, lambda: raw_round(rig, n)))
        rtt, floor = rig.metered("floor and Kafka RTT", n, lambda: floor_round(rig, n))
        arms["RTT"].add_round(rtt)
        arms["F"].add_round(floor)
        denied, applied = rig.metered("revocation", n_rev,
                                      lambda: revoke_round(rig, monitor, n_rev))
        arms["V"].add_round(denied)
        arms["V_applied"].add_round(applied)
        if rig.bao is not None:
            created, revoked, failed = bao_round(rig.bao, n)
            arms["B_create"].add_round(created)
            arms["B_revoke"].add_round(revoked)
            bao_failures += failed
        p50 = {k: arms[k].round_stat(r, 50) for k in ("S_redis", "R", "F")}
        say(f"latency round {r + 1}/{rounds}: p50 worker {p50['S_redis']:.2f} ms, "  # type: ignore[operator]
            f"raw {p50['R']:.2f} ms, floor {p50['F']:.2f} ms")
    monitor.close()
    arms["B_revoke"].notes = f"{bao_failures} revoked token(s) still answered lookup-self"
    return arms
