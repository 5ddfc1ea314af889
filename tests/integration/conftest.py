"""Integration fixtures: a test policy with a pool of agents, a worker process, topic taps."""

from __future__ import annotations

import itertools
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from broker.adapters.audit.keys import ensure_keys
from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.policy import load_policy
from broker.stack.worker import WorkerProcess
from tests.support.approval_policy import add_approval_rules
from tests.support.audit import audit_leaks
from tests.support.helpers import Tap
from tests.support.identities import Registrar, harness_signer
from tests.support.services import Services

ROOT = Path(__file__).resolve().parents[2]
POOL = 400


@pytest.fixture(scope="session")
def run_id() -> str:
    """A per-session tag so agent ids and consumer groups never collide with earlier runs."""
    return uuid.uuid4().hex[:8]


CLASSES = (("f", "fraud-detection", 0.9), ("r", "reporting", 0.6), ("b", "bulk-test", 0.5),
           ("n", "analytics-test", 0.5))


def _bulk_class(policy: dict[str, Any]) -> None:
    """A class whose grants last minutes: bursts on a loaded machine must not go stale."""
    policy["agent_classes"]["bulk-test"] = {
        "baseline": [],
        "ceiling": ["payments:accounts.*", "crm:customer.pii.read"],
    }
    policy["escalation_rules"].append(
        {
            "id": "bulk-test-freeze",
            "agent_classes": ["bulk-test"],
            "scopes": ["payments:accounts.freeze", "crm:customer.pii.read"],
            "when": "request.confidence >= agent.confidence_threshold",
            "max_duration": "10m",
            "budgets": {"payments:accounts.freeze": 3},  # the budget tests count against it
        }
    )


def _analytics_class(policy: dict[str, Any]) -> None:
    """The only class the behaviour detectors watch in tests, with windows of seconds."""
    policy["agent_classes"]["analytics-test"] = {"baseline": [], "ceiling": ["payments:accounts.*"]}
    policy["escalation_rules"].append({
        "id": "analytics-test-freeze", "agent_classes": ["analytics-test"],
        "scopes": ["payments:accounts.freeze"],
        "when": "request.confidence >= agent.confidence_threshold", "max_duration": "10m"})
    policy["detectors"] = {
        "bucket": "1s", "retention": "1h", "agent_classes": ["analytics-test"],
        "rate_spike": {"window": "2s", "baseline": "300s", "min_history": "8s", "factor": 8,
                       "min_requests": 12, "severity": 0.9, "cooldown": "30s"},
    }


@pytest.fixture(scope="session")
def test_policy(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Path:
    """The fraud policy plus a bulk-test class, and a pool of fresh agents of each class."""
    bundle = tmp_path_factory.mktemp("policy")
    policy = yaml.safe_load((ROOT / "policies" / "fraud" / "policy.yaml").read_text())
    _bulk_class(policy)
    approval_agents = add_approval_rules(policy, run_id)
    _analytics_class(policy)
    (bundle / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    lines = ["apiVersion: permbroker/v1", "kind: Agents", "agents:"]
    for n in range(POOL):
        for suffix, cls, threshold in CLASSES:
            lines += [
                f"  - agent_id: t{run_id}-{suffix}{n:03d}",
                f"    agent_class: {cls}",
                "    owner: tests@example.com",
                "    model: {name: test-model, version: '1.0', digest: 'sha256:00'}",
                f"    confidence_threshold: {threshold}",
            ]
    lines += approval_agents
    (bundle / "agents.yaml").write_text("\n".join(lines) + "\n")
    return bundle


@pytest.fixture(scope="session")
def agents(run_id: str, registrar: Registrar) -> Callable[[str], str]:
    """A never-used agent id of the pool: agents('f') fraud, ('r') reporting, ('b') bulk-test.

    Each is registered (with a key of its own) before it is handed out.
    """
    return pool_taker(run_id, registrar, CLASSES, POOL)


def pool_taker(run_id: str, registrar: Registrar, classes: tuple[tuple[str, str, float], ...],
               pool: int) -> Callable[[str], str]:
    """Hands out each pool agent of a class suffix once, registered before it is handed out."""
    counters = {suffix: itertools.count() for suffix, _cls, _t in classes}

    def take(kind: str = "f") -> str:
        n = next(counters[kind])
        assert n < pool, "agent pool exhausted: raise POOL"
        return registrar.ensure(f"t{run_id}-{kind}{n:03d}")

    return take


@pytest.fixture(scope="session")
def registrar(worker: WorkerProcess, settings: Settings, test_policy: Path) -> Iterator[Registrar]:
    """Registers pool agents through the operator's signed commands; their keys in a tmp store.

    AgentClient and the operator SDK find the keys through the environment, as they would on an
    agent's or an operator's machine.
    """
    env = {"PERMBROKER_AGENT_KEY_DIR": str(settings.key_path("agents")),
           "PERMBROKER_OPERATOR_KEY_FILE": str(settings.key_path("operator"))}
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
def settings(
    services: Services, test_policy: Path, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of the test worker and clients (audit keys created, free text as HMACs)."""
    settings = Settings(
        kafka_bootstrap=services.bootstrap,
        redis_url=services.redis_url,
        policy_path=test_policy,
        app_id=f"permbroker-test-{run_id}",
        stack_dir=tmp_path_factory.mktemp("worker"),
        expiry_interval_s=0.2,
        grant_namespaces=("payments", "crm", "reports"),
        expiry_warning_s=2.0,
        audit_redact_free_text=True,
        audit_digest_interval_s=0.5,
        # One key set per Kafka cluster, kept across sessions: a cluster the tests reuse
        # (PERMBROKER_TEST_KAFKA_BOOTSTRAP) holds digests signed in earlier sessions.
        audit_key_dir=ROOT / ".stack" / "audit-keys" / re.sub(r"\W", "_", services.bootstrap),
    )
    ensure_keys(settings)
    return settings


@pytest.fixture(scope="session")
def worker(settings: Settings) -> Iterator[WorkerProcess]:
    """One worker process for the session (tests may kill and restart it)."""
    ensure_identity_files(settings)  # the broker's token keys and a test operator's key
    proc = WorkerProcess(settings)
    proc.start()
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def publisher(settings: Settings) -> Publisher:
    """A producer acting as the test harness: signs as the agent each message is keyed by."""
    signer = harness_signer(AgentKeyStore.from_settings(settings))
    return Publisher(settings.kafka_bootstrap, source="/tests", signer=signer)


@pytest.fixture
def tap(settings: Settings) -> Iterator[Callable[[str], Tap]]:
    """Open taps on topics; closed after the test."""
    opened: list[Tap] = []

    def open_tap(topic: str) -> Tap:
        t = Tap(settings.kafka_bootstrap, topic)
        opened.append(t)
        return t

    yield open_tap
    for t in opened:
        t.close()


@pytest.fixture
def rclient(settings: Settings) -> Iterator[redis.Redis]:
    """A plain Redis client on the store."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


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
    client = redis.Redis.from_url(services.redis_url)
    try:
        forever = keys_without_ttl(client)
    finally:
        client.close()
    assert not forever, f"keys without a TTL: {forever[:10]}"


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_the_audit(settings: Settings) -> Iterator[None]:
    """After the session, no seeded secret, key or account number is in clear in the audit."""
    yield
    leaks = audit_leaks(settings)
    assert not leaks, "in clear on the audit topics: " + "; ".join(leaks[:10])
