"""A private three-broker Kafka cluster (KRaft, RF 3, min ISR 2) + Redis + one worker.

Imports broker, tests. Ports BASE+20..BASE+27 (BASE is PERMBROKER_FAULTS_PORT_BASE): nodes on
BASE+20/22/24 (controllers +1), Redis on BASE+26, the worker's metrics on BASE+27. Everything lives
in .stack/faults-cluster and is stopped and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka.admin import ConfigResource, ResourceType

from broker.adapters.audit.keys import ensure_keys
from broker.adapters.crypto.keystore import ensure_identity_files
from broker.adapters.kafka.admin import admin_client, cluster_metadata
from broker.config import Settings
from broker.errors import StackError
from broker.stack import cluster as stack_cluster
from broker.stack import kafka as stack_kafka
from broker.stack import local as stack
from broker.stack.credentials import role_access
from broker.stack.procs import kill as kill_process
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.faults.ports import BASE
from tests.support.identities import close_shared_trust, own_keys

ROOT = Path(__file__).resolve().parents[3]
SPEC = stack_cluster.ClusterSpec(ROOT / ".stack" / "faults-cluster", BASE + 20, nodes=3)
REDIS = Settings(stack_dir=SPEC.root / "redis-stack", redis_port=BASE + 26,
                 kafka_port=BASE + 28, kafka_controller_port=BASE + 29)


@contextlib.contextmanager
def cluster_services(policy: Path, tag: str, workdir: Path) -> Iterator[tuple[Settings,
                                                                              WorkerProcess]]:
    """Start the cluster, Redis and a worker; stop and delete all of it afterwards."""
    stack_cluster.down(SPEC)
    shutil.rmtree(SPEC.root, ignore_errors=True)
    SPEC.root.mkdir(parents=True)
    worker: WorkerProcess | None = None
    settings: Settings | None = None
    try:
        _start(stack_kafka.ensure_jars(Settings(), lambda _msg: None))
        stack.provision(SPEC.admin(), SPEC.credentials(), f"permbroker-cluster-{tag}",
                        timeout=120)
        settings = Settings(kafka_bootstrap=SPEC.bootstrap, redis_url=f"redis://127.0.0.1:"
                            f"{REDIS.redis_port}/0", policy_path=policy,
                            app_id=f"permbroker-cluster-{tag}", stack_dir=workdir,
                            kafka_credentials_file=SPEC.credentials_file,
                            expiry_interval_s=0.2, session_timeout_s=6.0, metrics_port=BASE + 27,
                            **own_keys())  # the cluster worker's keys, not the session's
        ensure_keys(settings)
        ensure_identity_files(settings)
        worker = WorkerProcess(settings, role_access(settings, topics.WORKER),
                               name="cluster-worker")
        worker.start()
        worker.wait_ready(300)
        yield settings, worker
    finally:
        if worker is not None:
            worker.stop()
        if settings is not None:
            close_shared_trust(settings)  # its key-set reader, before the nodes it reads stop
        stack_cluster.down(SPEC)
        stack.down(REDIS, wipe=True)
        shutil.rmtree(SPEC.root, ignore_errors=True)


def _start(libs: Path, attempts: int = 3) -> None:
    """Start the nodes and Redis, again for those that died: the ports are in the ephemeral
    range, where any outgoing connection of a busy machine may hold one for a while."""
    for attempt in range(attempts):
        try:
            for node in range(1, SPEC.nodes + 1):
                if stack_cluster.node_record(SPEC, node) is None:
                    stack_cluster.start_node(SPEC, libs, node)
            stack_cluster.wait_brokers(SPEC, SPEC.nodes, 300)
            stack.start_redis(REDIS)
            return
        except StackError:
            if attempt == attempts - 1:
                raise


def leaders(topic_names: set[str]) -> dict[int, int]:
    """How many partitions of these topics each node leads now."""
    meta = cluster_metadata(admin_client(SPEC.admin()), 10)
    count: dict[int, int] = {}
    for name in topic_names:
        for p in meta.topics[name].partitions.values():
            count[p.leader] = count.get(p.leader, 0) + 1
    return count


def replication(topic_names: set[str]) -> tuple[int, int]:
    """(smallest replica count, smallest in-sync replica count) over these topics' partitions."""
    meta = cluster_metadata(admin_client(SPEC.admin()), 10)
    parts = [p for name in topic_names for p in meta.topics[name].partitions.values()]
    return min(len(p.replicas) for p in parts), min(len(p.isrs) for p in parts)


def min_insync(topic: str) -> int:
    """The topic's effective min.insync.replicas, as the cluster reports it."""
    admin = admin_client(SPEC.admin())
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)])
    configs = next(iter(futures.values())).result(timeout=30)
    return int(configs["min.insync.replicas"].value)


def kill_node(node: int) -> None:
    """kill -9 one node of the cluster and wait until it is gone."""
    record = stack_cluster.node_record(SPEC, node)
    assert record is not None, f"kafka node {node} is not running"
    assert kill_process(record, 30), f"kafka node {node} still there 30 s after kill -9"
