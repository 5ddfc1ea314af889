"""Integration fixtures: a test policy with a pool of agents, and the suite's settings.

The fixtures both suites share (worker process, publisher, taps, ...) come from
tests/support/fixtures.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.adapters.audit.keys import ensure_keys
from broker.adapters.redis.calls import cluster_url, has_user
from broker.config import Settings
from broker.stack import redisusers
from broker.stack.credentials import Credentials
from broker.stack.tenants import provision_tenants
from schemas.topics import ADMIN
from tests.support.approval_policy import DELEGATE, add_approval_rules, requester, verifier
from tests.support.audit import audit_leaks
from tests.support.bundles import bulk_class
from tests.support.fixtures import (  # noqa: F401 - fixtures of this suite
    every_grant_key_expires,
    publisher,
    rclient,
    registrar,
    run_id,
    shared_trust_closed,
    tap,
    trust,
    worker,
)
from tests.support.identities import Registrar, pool_taker
from tests.support.services import Services

ROOT = Path(__file__).resolve().parents[2]
# The session worker's /metrics, moved with the test stack (two checkouts on one machine).
METRICS_PORT = 29464 + int(os.environ.get("PERMBROKER_TEST_PORT_OFFSET", "0"))
SEALER_METRICS_PORT = METRICS_PORT + 1
POOL = 400
CLASSES = (("f", "fraud-detection", 0.9), ("r", "reporting", 0.6), ("b", "bulk-test", 0.5),
           ("n", "analytics-test", 0.5))


def _analytics_class(policy: dict[str, Any]) -> None:
    """The only class the behaviour detectors watch in tests, with the shipped thresholds."""
    policy["agent_classes"]["analytics-test"] = {"baseline": [], "ceiling": ["payments:accounts.*"]}
    policy["escalation_rules"].append({
        "id": "analytics-test-freeze", "agent_classes": ["analytics-test"],
        "scopes": ["payments:accounts.freeze"],
        "when": "request.confidence >= agent.confidence_threshold", "max_duration": "10m"})
    # The fraud bundle's own detectors section, unchanged, watching the analytics-test class
    # only: other tests' agents are not profiled (a denial burst would revoke them).
    policy["detectors"] = {**policy["detectors"], "agent_classes": ["analytics-test"]}


@pytest.fixture(scope="session")
def test_policy(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Path:
    """The fraud policy plus a bulk-test class, and a pool of fresh agents of each class."""
    bundle = tmp_path_factory.mktemp("policy")
    policy = yaml.safe_load((ROOT / "policies" / "fraud" / "policy.yaml").read_text())
    bulk_class(policy)
    approval_agents = add_approval_rules(policy, run_id)
    _analytics_class(policy)
    policy["delegation_rules"] = [{  # fraud agents may hand a freeze (never PII) to each other
        "id": "fraud-hands-over-freeze", "from_classes": ["fraud-detection"],
        "to_classes": ["fraud-detection"], "scopes": ["payments:accounts.freeze"]}, {
        # bulk-test grants last minutes: long enough to outlive a worker restart
        "id": "bulk-hands-over-freeze", "from_classes": ["bulk-test"],
        "to_classes": ["bulk-test"], "scopes": ["payments:accounts.freeze"]}, {
        "id": "bulk-hands-freeze-on-approval", "from_classes": ["bulk-test"],
        "to_classes": ["approval-test"], "scopes": ["payments:accounts.freeze"],
        # the delegate is listed too: its own vote must still never count
        "approval": {"quorum": 2, "window": "5m", "approvers": [
            verifier(run_id, 0), verifier(run_id, 1), requester(run_id, "a", DELEGATE)]}}]
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


@pytest.fixture(scope="session")
def settings(
    services: Services, test_policy: Path, run_id: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of the test worker and clients (audit keys created, free text as HMACs)."""
    settings = Settings(
        kafka_bootstrap=services.bootstrap,
        kafka_credentials_file=services.credentials_file,
        redis_url=services.redis_url,
        policy_path=test_policy,
        app_id=f"permbroker-test-{run_id}",
        stack_dir=(stack_dir := tmp_path_factory.mktemp("worker")),
        metrics_port=METRICS_PORT,
        expiry_interval_s=0.2,
        grant_namespaces=("payments", "crm", "reports"),
        expiry_warning_s=2.0,
        audit_redact_free_text=True,
        audit_digest_interval_s=0.5,
        audit_sealer=False,  # the sealer runs as its own process (the worker fixture)
        audit_sealer_metrics_port=SEALER_METRICS_PORT,
        # The worker traces every decision (tests/integration/test_tracing.py reads the spans).
        tracing=True,
        tracing_file=stack_dir / "spans.jsonl",
        # One key set per Kafka cluster, kept across sessions: a cluster the tests reuse
        # (PERMBROKER_TEST_KAFKA_BOOTSTRAP) holds digests signed in earlier sessions.
        audit_key_dir=ROOT / ".stack" / "audit-keys" / re.sub(r"\W", "_", services.bootstrap),
    )
    ensure_keys(settings)
    settings = settings.model_copy(update=_tenants(settings, test_policy, run_id))
    credentials = Credentials.read(services.credentials_file) \
        if services.credentials_file else None
    if credentials is not None:  # each tenant's own Kafka users, topics and ACLs
        provision_tenants(settings, services.kafka(ADMIN), credentials)
        _tenant_redis_users(settings, services)
    return settings


def _tenant_redis_users(settings: Settings, services: Services) -> None:
    """The tenants' service users into a single Redis that has users (as the stack adds them)."""
    if not has_user(settings.redis_url) or cluster_url(settings.redis_url) is not None:
        return
    credentials = Credentials.read(services.credentials_file) if services.credentials_file \
        else None
    assert credentials is not None
    redisusers.apply_at(settings.redis_url, credentials)


def _tenants(settings: Settings, test_policy: Path, run_id: str) -> dict[str, Path]:
    """Tenants beside the default one, each a copy of the test bundle: acme's also refuses the
    freeze; initech's quota is two escalations an hour, umbrella's one active grant; and an
    operator of acme and of globex and a resource service of acme
    (tests/integration/identity/test_tenants.py)."""
    root = settings.stack_dir / "tenants"
    changes: dict[str, Callable[[dict[str, Any]], None]] = {
        "acme": lambda p: p["deny_rules"].append({
            "id": "acme-no-freeze", "scopes": ["payments:accounts.freeze"], "when": "true",
            "reason": "acme freezes accounts by hand"}),
        "globex": lambda p: None,
        "initech": lambda p: p.update(quotas={"escalations": {"requests": 2, "per": "1h"}}),
        "umbrella": lambda p: p.update(quotas={"active_grants": 1}),
    }
    for tenant, change in changes.items():
        shutil.copytree(test_policy, root / tenant)
        doc = root / tenant / "policy.yaml"
        policy = yaml.safe_load(doc.read_text())
        change(policy)
        doc.write_text(yaml.safe_dump(policy, sort_keys=False))
    scopes = settings.stack_dir / "operator-tenants.json"
    scopes.write_text(json.dumps({f"operator:acme-{run_id}": ["acme"],
                                  f"operator:globex-{run_id}": ["globex"],
                                  f"service:acme-{run_id}": ["acme"]}))
    return {"tenant_policies_dir": root, "operator_tenants_file": scopes}


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_the_audit(settings: Settings) -> Iterator[None]:
    """After the session, no seeded secret, key or account number is in clear in the audit."""
    yield
    leaks = audit_leaks(settings)
    assert not leaks, "in clear on the audit topics: " + "; ".join(leaks[:10])
