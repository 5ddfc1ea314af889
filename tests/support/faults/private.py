"""A private Kafka + Redis + worker for tests that kill, wipe or restart a service.

Imports broker, tests. Ports BASE+10..BASE+13, never the session stack's (BASE: see
tests/support/faults/ports.py); the stack lives in .stack/faults-private and is stopped and wiped
afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from broker.adapters.audit.keys import ensure_keys
from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher, consumer, end_offsets
from broker.config import Settings
from broker.errors import BusError, StackError
from broker.policy import load_policy
from broker.stack import local as stack
from broker.stack.credentials import credentials_file, role_access
from broker.stack.procs import ProcRecord, is_ours
from broker.stack.procs import kill as kill_process
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.faults.ports import BASE
from tests.support.identities import Registrar, close_shared_trust, harness_signer, own_keys
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[3]
STACK = Settings(stack_dir=ROOT / ".stack" / "faults-private", kafka_port=BASE + 10,
                 kafka_controller_port=BASE + 11, redis_port=BASE + 12)


@contextlib.contextmanager
def private_services(policy: Path, tag: str, workdir: Path, redis_url: str = "",
                     ) -> Iterator[tuple[Settings, WorkerProcess]]:
    """Start Kafka + Redis + one worker on private ports; stop and wipe them afterwards.

    With ``redis_url`` (a Redis Cluster the caller runs) the worker's grant store is that one."""
    status = _up()
    store = redis_url or stack.redis_url(STACK)  # as admin: the worker logs in as its role
    settings = Settings(kafka_bootstrap=status.bootstrap, redis_url=store,
                        kafka_credentials_file=credentials_file(STACK), policy_path=policy,
                        app_id=f"permbroker-private-{tag}", stack_dir=workdir,
                        expiry_interval_s=0.2, session_timeout_s=6.0, metrics_port=BASE + 13,
                        **own_keys())  # its worker's keys, not the session's
    ensure_keys(settings)
    ensure_identity_files(settings)  # the private worker's token keys and operator key
    worker = WorkerProcess(settings, role_access(settings, topics.WORKER), name="private-worker")
    try:
        worker.start()
        worker.wait_ready(180)
        yield settings, worker
    finally:
        worker.stop()
        close_shared_trust(settings)
        stack.down(STACK, wipe=True)


@contextlib.contextmanager
def private_stack() -> Iterator[Settings]:
    """Kafka + Redis on the private ports and no worker (the property model's Kafka), as settings
    that reach them (each role as its own Kafka user: ``role_access``); stopped and wiped
    afterwards."""
    status = _up()
    settings = Settings(kafka_bootstrap=status.bootstrap, redis_url=stack.redis_url(STACK),
                        kafka_credentials_file=credentials_file(STACK))
    try:
        wait_until(lambda: _leaders(role_access(settings, topics.ADMIN)), 60,
                   "every topic partition has a leader")
        yield settings
    finally:
        stack.down(STACK, wipe=True)


def _leaders(kafka: KafkaAccess) -> bool:
    """Whether the log end of every partition of every topic can be read (leaders elected)."""
    c = consumer(kafka)
    try:
        for topic in topics.ALL_TOPICS:
            end_offsets(c, topic.name, timeout=5)
        return True
    except BusError:
        return False
    finally:
        c.close()


def register(settings: Settings, agent_ids: Iterable[str]) -> None:
    """Register pool agents on the private stack (its own operator, its own agent keys)."""
    registrar = Registrar(settings, load_policy(settings.policy_path))
    try:
        for agent in agent_ids:
            registrar.ensure(agent)
    finally:
        registrar.close()


def publisher(settings: Settings, source: str) -> Publisher:
    """A producer that signs as the agent each message is keyed by (private key store)."""
    return Publisher(role_access(settings, topics.AGENT), source=source,
                     signer=harness_signer(AgentKeyStore.from_settings(settings)))


def kill(service: str) -> None:
    """kill -9 one service of the private stack and wait until it is gone."""
    record = ProcRecord.read(STACK.stack_dir / f"{service}.pid")
    assert record is not None and is_ours(record), f"{service} is not running"
    assert kill_process(record, 30), f"{service} still there 30 s after kill -9"


def _up(attempts: int = 3) -> stack.StackStatus:
    """stack.up, retried: the ports are in the Linux ephemeral range (32768-60999), so any
    outgoing connection on a busy machine may hold one for a while, and clients reconnecting to
    a dead service can self-connect on its port (TCP simultaneous open) just as it binds again."""
    for attempt in range(attempts):
        try:
            return stack.up(STACK, timeout=240)
        except StackError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def restart() -> None:
    """Start again whatever of the private stack is not running (same data dirs)."""
    _up()
