"""A local multi-broker Kafka cluster (KRaft, combined controller+broker nodes). Imports stdlib.

Also imports broker.errors and the stack_kafka / stack_procs helpers. The single-broker stack
(broker.stack.local) is unchanged; this is for tests and trials of replication: N JVMs on
loopback, each node a broker and one of N quorum voters, topics created by default with
replication factor N and ``min.insync.replicas`` = N - 1, so a producer with acks=all keeps
writing with one node down and an acknowledged write survives the loss of any one node.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from broker.adapters.kafka.admin import admin_client, cluster_metadata
from broker.errors import BusError, StackError
from broker.stack import kafka as stack_kafka
from broker.stack.procs import ProcRecord, exit_code, is_ours, spawn, stop, tail

LOOPBACK = "127.0.0.1"
# Three JVMs next to everything else on a small machine: a small heap each.
HEAP = ("-Xms128m", "-Xmx256m")


@dataclass(frozen=True)
class ClusterSpec:
    """Where the nodes live: node n (1-based) listens on base_port + 2(n-1), its controller + 1."""

    root: Path
    base_port: int
    nodes: int = 3

    def port(self, node: int) -> int:
        return self.base_port + 2 * (node - 1)

    def controller_port(self, node: int) -> int:
        return self.port(node) + 1

    def node_dir(self, node: int) -> Path:
        return self.root / f"kafka-{node}"

    def pid_file(self, node: int) -> Path:
        return self.root / f"kafka-{node}.pid"

    def log_file(self, node: int) -> Path:
        return self.root / f"kafka-{node}.log"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{LOOPBACK}:{self.port(n)}" for n in range(1, self.nodes + 1))

    @property
    def min_isr(self) -> int:
        return max(self.nodes - 1, 1)


def write_node_properties(spec: ClusterSpec, node: int) -> Path:
    """server.properties of one node: broker + controller, N voters, RF N, min ISR N-1."""
    rf, isr = str(spec.nodes), str(spec.min_isr)
    voters = ",".join(f"{n}@{LOOPBACK}:{spec.controller_port(n)}"
                      for n in range(1, spec.nodes + 1))
    port, cport, node_dir = spec.port(node), spec.controller_port(node), spec.node_dir(node)
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node),
        "controller.quorum.voters": voters,
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{cport}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node_dir / "data"),
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
        "unclean.leader.election.enable": "false",
        # The cleaner's default 128 MiB dedupe buffer alone would not fit the small heap.
        "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        "group.initial.rebalance.delay.ms": "0",
    }
    node_dir.mkdir(parents=True, exist_ok=True)
    path = node_dir / "server.properties"
    path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
    return path


def start_node(spec: ClusterSpec, libs: Path, node: int) -> ProcRecord:
    """Format the node's log dir once (the cluster's shared id) and start its JVM."""
    properties = write_node_properties(spec, node)
    (spec.node_dir(node) / "data").mkdir(parents=True, exist_ok=True)
    shared = stack_kafka.cluster_id(spec.root)  # one id for every node of the cluster
    (spec.node_dir(node) / "cluster.id").write_text(shared + "\n")
    stack_kafka.format_once(libs, spec.node_dir(node), properties)
    argv = stack_kafka.server_argv(libs, properties, heap=HEAP)
    record = spawn(argv, cwd=spec.node_dir(node), log_path=spec.log_file(node))
    record.write(spec.pid_file(node))
    return record


def node_record(spec: ClusterSpec, node: int) -> ProcRecord | None:
    """The live process of one node, if it runs."""
    record = ProcRecord.read(spec.pid_file(node))
    return record if record is not None and is_ours(record) else None


def wait_brokers(spec: ClusterSpec, count: int, timeout: float) -> None:
    """Wait until the cluster's metadata lists ``count`` brokers (StackError with a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            brokers = cluster_metadata(admin_client(spec.bootstrap), 5).brokers
            if len(brokers) >= count:
                return
        except BusError:
            pass
        for node in range(1, spec.nodes + 1):
            record = ProcRecord.read(spec.pid_file(node))
            if record is not None and exit_code(record.pid) is not None:
                raise StackError(f"kafka node {node} exited while starting; "
                                 f"{spec.log_file(node)} ends:\n{tail(spec.log_file(node))}")
        if time.monotonic() >= deadline:
            raise StackError(f"the cluster did not show {count} brokers within {timeout:.0f}s")
        time.sleep(0.5)


def down(spec: ClusterSpec, timeout: float = 30.0) -> list[int]:
    """Stop every node this spec recorded (never any other process); returns their pids."""
    records = [r for n in range(1, spec.nodes + 1) if (r := node_record(spec, n)) is not None]
    stopped = [r.pid for r in stop(records, timeout=timeout)]
    for node in range(1, spec.nodes + 1):
        spec.pid_file(node).unlink(missing_ok=True)
    return stopped
