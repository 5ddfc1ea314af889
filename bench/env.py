"""The bench's own stack, policy bundle, worker(s) and mirror topics. Imports broker, schemas.

``make bench`` never touches a user's stack or the test stack: it starts Kafka and Redis in
``.stack/bench`` on ports of its own (``PERMBROKER_BENCH_PORT_OFFSET`` shifts them), wipes them
before and after, and stops exactly the processes it started.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import yaml

from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.kafka import acls
from broker.adapters.kafka.admin import ensure_topics
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.config import Settings
from broker.errors import BrokerError
from broker.policy import load_policy
from broker.sdk.agent.identity import keyed_signer
from broker.sdk.operator.client import OperatorClient
from broker.stack import local as stack
from broker.stack.credentials import role_access
from broker.stack.procs import ProcRecord
from broker.stack.sealer import SealerProcess
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".stack" / "bench"
FRAUD_POLICY = ROOT / "policies" / "fraud"
# Mirror topics of the reference loops: the registry's shape (partitions, configs), own names,
# so the reference never competes with the worker for the same messages. Their ACLs: the
# harness writes as an agent, the reference loops run as the worker, like the product.
RAW_IN = dataclasses.replace(topics.ESCALATIONS, name="bench.raw.escalations",
                             writers=(topics.AGENT,), readers=(topics.WORKER,))
RAW_OUT = dataclasses.replace(topics.GRANTS, name="bench.raw.grants",
                              writers=(topics.WORKER,), readers=(topics.SERVICE,))
FLOOR = dataclasses.replace(topics.ESCALATIONS, name="bench.floor",
                            writers=(topics.AGENT,), readers=(topics.WORKER,))
POOLS = {"lat": 16, "rev": 400, "tput": 120, "exp": 40, "chk": 8}


def bench_settings() -> Settings:
    """Settings of the bench stack and worker (own dir and ports)."""
    off = int(os.environ.get("PERMBROKER_BENCH_PORT_OFFSET", "0"))
    kafka, redis_port = 47092 + off, 47379 + off
    return Settings(
        stack_dir=BENCH_DIR,
        kafka_port=kafka,
        kafka_controller_port=kafka + 1,
        redis_port=redis_port,
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        policy_path=BENCH_DIR / "policy",
        app_id="permbroker-bench",
        expiry_interval_s=0.5,
        audit_sealer=False,  # the sealer runs as its own process, its CPU counted apart
        audit_sealer_metrics_port=0,
        metrics_port=47464 + off,  # worker 1's /metrics: the bench reads its stage histograms
    )


def agent_id(pool: str, n: int) -> str:
    """The n-th agent of a pool (every pool is class fraud-detection)."""
    return f"bench-{pool}-{n:04d}"


def write_policy(dest: Path) -> Path:
    """The example fraud policy without its behaviour detectors, plus fraud-detection agents.

    The detectors are left out on purpose: the benchmarks drive pools of agents far above any
    agent's usual rate and provoke stale denials, so the detectors would (rightly) quarantine the
    benchmark's own agents mid-run. The report says so next to the figures.
    """
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    policy = yaml.safe_load((FRAUD_POLICY / "policy.yaml").read_text())
    policy.pop("detectors", None)
    (dest / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    lines = ["apiVersion: permbroker/v1", "kind: Agents", "agents:"]
    for pool, size in POOLS.items():
        for n in range(size):
            lines += [
                f"  - agent_id: {agent_id(pool, n)}",
                "    agent_class: fraud-detection",
                "    owner: bench@example.com",
                "    model: {name: fraud-gbm, version: '3.2', digest: 'sha256:4f1c9a7e2b3d'}",
                "    confidence_threshold: 0.9",
            ]
    (dest / "agents.yaml").write_text("\n".join(lines) + "\n")
    return dest


@contextmanager
def bench_stack(say: Callable[[str], None]) -> Iterator[Settings]:
    """A fresh stack (wiped before and after) with the contract and mirror topics."""
    settings = bench_settings()
    stack.down(settings, wipe=True)
    try:
        stack.up(settings, progress=say)
        settings = stack.as_admin(settings)
        admin = role_access(settings, topics.ADMIN)
        ensure_topics(admin, (RAW_IN, RAW_OUT, FLOOR))
        acls.apply(admin, [a for t in (RAW_IN, RAW_OUT, FLOOR) for a in acls.topic_acls(t)])
        write_policy(settings.policy_path)
        ensure_identity_files(settings)  # the broker's token keys and the bench operator's key
        client = redis.Redis.from_url(settings.redis_url)
        client.config_set("notify-keyspace-events", "K$")  # grant visibility without polling
        client.close()
        yield settings
    finally:
        stopped = stack.down(settings, wipe=True)
        say(f"bench stack stopped: {', '.join(stopped) or 'nothing was running'}")


@contextmanager
def sealer(settings: Settings) -> Iterator[SealerProcess]:
    """The audit sealer's child process (the workers do not seal), ready, stopped on exit."""
    proc = SealerProcess(settings, role_access(settings, topics.WORKER))
    proc.start()
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()


@contextmanager
def worker(settings: Settings, name: str = "worker", *,
           register: bool = True) -> Iterator[WorkerProcess]:
    """One worker child process, ready, stopped again on exit; with ``register``, the bench's
    agents are registered once it is (a no-op when they already are)."""
    proc = WorkerProcess(settings, role_access(settings, topics.WORKER), name=name)
    proc.start()
    try:
        proc.wait_ready(timeout=120)
        if register:
            register_agents(settings)
        yield proc
    finally:
        proc.stop()


def agent_keys(settings: Settings) -> AgentKeyStore:
    """Where the bench's agents keep their keys (in the bench stack dir)."""
    return AgentKeyStore.from_settings(settings)


def signing_publisher(settings: Settings, source: str) -> Publisher:
    """A producer that signs as the agent each message is keyed by (the product's real path)."""
    return Publisher(role_access(settings, topics.AGENT), source=source,
                     signer=keyed_signer(agent_keys(settings)))


def register_agents(settings: Settings) -> None:
    """Give every bench agent a key and register it (once per stack; Kafka keeps the record)."""
    operator = role_access(settings, topics.OPERATOR)
    with JwksView.from_settings(settings, operator) as keys:
        known = read_registry(operator, keys.trust)
    store = agent_keys(settings)
    todo = [a for a in load_policy(settings.policy_path).agents() if known.get(a.agent_id) is None]
    if not todo:
        return
    with OperatorClient(settings, role_access(settings, topics.OPERATOR)) as op:
        op.run_many([op.register_command(a, (store.load(a.agent_id) if store.exists(a.agent_id)
                                             else store.generate(a.agent_id)).current.jwk,
                                         reason="bench") for a in todo], timeout=120)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def jit_cpu_seconds(pid: int) -> float:
    """CPU time the JIT compiler threads (C1, C2) of a JVM have used so far, from /proc."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if not (task / "comm").read_text().startswith(("C1 Compiler", "C2 Compiler")):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def stack_pids(settings: Settings) -> dict[str, int]:
    """The pids of the bench stack's Kafka and Redis (from the stack's pid files)."""
    out = {}
    for name in ("kafka", "redis"):
        record = ProcRecord.read(settings.stack_dir / f"{name}.pid")
        if record is not None:
            out[name] = record.pid
    return out


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BrokerError(f"no VmRSS for pid {pid}")


class RawLoop:
    """The reference loop (``python -m bench.rawloop``) as a child process."""

    def __init__(self, settings: Settings) -> None:
        self.log_path = settings.stack_dir / "rawloop.log"
        self._settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The raw loop's pid (once started)."""
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> RawLoop:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.rawloop", self._settings.redis_url, RAW_IN.name,
                 RAW_OUT.name, str(RAW_IN.partitions)],
                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**worker_env(self._settings, role_access(self._settings, topics.WORKER)),
                     "PYTHONPATH": str(ROOT)},
            )
        deadline = time.monotonic() + 60
        while "raw loop ready" not in self.log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"raw loop did not start; see {self.log_path}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
