"""Session fixtures the integration and fault suites share; their conftests import them.

Imports broker, tests.support. A run id that keeps agent ids and consumer groups apart from
earlier runs, the worker process, a signing publisher, topic taps, a Redis client, and the
session-end check that no per-agent key lives forever (invariant 2).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import close, sync_client
from broker.config import Settings
from broker.policy import load_policy
from broker.stack.credentials import role_access
from broker.stack.sealer import SealerProcess
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.identities import (
    Registrar,
    close_shared_trust,
    harness_signer,
    shared_trust,
)
from tests.support.services import Services
from tests.support.taps import Tap


@pytest.fixture(scope="session")
def run_id() -> str:
    """A per-session tag so agent ids and consumer groups never collide with earlier runs."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def registrar(worker: WorkerProcess, settings: Settings, test_policy: Path) -> Iterator[Registrar]:
    """Registers pool agents through the operator's signed commands; their keys in a tmp store.

    AgentClient, the operator SDK and the CLI find the keys (and the broker's trust anchor)
    through the environment, as they would on an agent's or an operator's machine.
    """
    env = {"PERMBROKER_AGENT_KEY_DIR": str(settings.key_path("agents")),
           "PERMBROKER_OPERATOR_KEY_FILE": str(settings.key_path("operator")),
           "PERMBROKER_TRUST_ANCHOR": str(settings.key_path("trust-anchor")),
           "PERMBROKER_SERVICES_FILE": str(settings.key_path("services"))}
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    reg = Registrar(settings, load_policy(test_policy))
    yield reg
    reg.close()
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    """One worker process for the session (tests may kill and restart it), and the audit
    sealer's process beside it (the session settings turn the worker's own sealer off)."""
    ensure_identity_files(settings)  # the broker's token keys and a test operator's key
    proc = WorkerProcess(settings, role_access(settings, topics.WORKER))
    sealer = SealerProcess(settings, role_access(settings, topics.WORKER))
    proc.start()
    try:
        proc.wait_ready()
        sealer.start()  # after the worker: the raw audit topic exists by then
        sealer.wait_ready()
        yield proc
    finally:
        sealer.stop()
        proc.stop()


@pytest.fixture(scope="session", autouse=True)
def shared_trust_closed(services: Services) -> Iterator[None]:
    """The shared JWKS views stop before the session's services do."""
    yield
    close_shared_trust()


@pytest.fixture(scope="session")
def trust(worker: WorkerProcess, settings: Settings) -> RecordTrust:
    """The session broker's chain of trust (anchor, then its published key sets), shared."""
    return shared_trust(settings)


@pytest.fixture(scope="session")
def publisher(settings: Settings) -> Publisher:
    """A producer acting as the test harness: signs as the agent each message is keyed by.

    It is on Kafka as the agent role: it writes what agents write.
    """
    signer = harness_signer(AgentKeyStore.from_settings(settings))
    return Publisher(role_access(settings, topics.AGENT), source="/tests", signer=signer)


@pytest.fixture
def tap(settings: Settings) -> Iterator[Callable[[str], Tap]]:
    """Open taps on topics (as the admin: a tap reads whatever a test watches); closed after."""
    opened: list[Tap] = []

    def open_tap(topic: str) -> Tap:
        t = Tap(role_access(settings, topics.ADMIN), topic)
        opened.append(t)
        return t

    yield open_tap
    for t in opened:
        t.close()


@pytest.fixture
def rclient(settings: Settings) -> Iterator[redis.Redis]:
    """A plain Redis client on the store."""
    client = sync_client(settings.redis_url)
    yield client
    close(client)


def keys_without_ttl(client: redis.Redis) -> list[str]:
    """Per-agent keys (grants, markers, records) that would live forever."""
    return [
        k.decode()
        for k in client.scan_iter(match=keys.AGENT_KEY_PATTERN, count=1000)
        if client.pttl(k) == -1
    ]


@pytest.fixture(scope="session", autouse=True)
def every_grant_key_expires(services: Services) -> Iterator[None]:
    """After the integration session, no per-agent key in Redis lacks a TTL (invariant 2)."""
    yield
    client = sync_client(services.redis_url)
    try:
        forever = keys_without_ttl(client)
    finally:
        close(client)
    assert not forever, f"keys without a TTL: {forever[:10]}"
