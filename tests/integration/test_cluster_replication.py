"""On a Redis Cluster a revocation (and its quarantine) is acknowledged only once a replica of
its master has it: with that replica stalled the store fails closed (StoreUnavailable, so the
worker retries), and the retry is acknowledged once the replica has it again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import cluster_url
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.errors import StoreUnavailable
from broker.grants.revocation import plan_revocation
from broker.policy.model import RiskAction
from broker.stack import rediscluster
from broker.stack.procs import ProcRecord, is_ours
from tests.support.services import TEST_STACK, unique

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("PERMBROKER_TEST_REDIS_CLUSTER") != "1",
                       reason="needs the Redis Cluster of make test-cluster"),
]
ACTION = RiskAction(revoke=True, rule="test-quarantine", reason="test", quarantine_s=600)


def _node(port: int, settings: Settings) -> redis.Redis:
    """One node, logged in as the suite's URL says (the cluster has the stack's users)."""
    login = urlsplit(settings.redis_url)
    return redis.Redis(host=rediscluster.LOOPBACK, port=port, socket_timeout=2.0,
                       socket_connect_timeout=2.0, username=unquote(login.username or ""),
                       password=unquote(login.password or ""))


def _master_and_replica(settings: Settings, agent: str) -> tuple[int, int]:
    """The ports of the master serving the agent's slot and of one of its replicas."""
    plain = cluster_url(settings.redis_url)
    assert plain is not None, "the suite runs on a cluster URL"
    node = redis.Redis.from_url(plain)
    try:
        slots = node.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    finally:
        node.close()
    for start, end, master, *replicas in slots:
        if start <= keys.agent_slot(agent) <= end:
            assert replicas, "the slot's master has a replica"
            return int(master[1]), int(replicas[0][1])
    raise AssertionError("no node serves the agent's slot")


@contextmanager
def _stalled(port: int) -> Iterator[None]:
    """The node on ``port`` stopped (SIGSTOP) for the block, then resumed."""
    record = ProcRecord.read(TEST_STACK.stack_dir / "redis-cluster" / str(port) / "redis.pid")
    assert record is not None and is_ours(record), f"cluster node {port} is ours and running"
    os.kill(record.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(record.pid, signal.SIGCONT)


def _replica_has(port: int, key: str, settings: Settings) -> bool:
    replica = _node(port, settings)
    try:
        replica.execute_command("READONLY")  # type: ignore[no-untyped-call]
        return bool(replica.exists(key))
    finally:
        replica.close()


async def test_a_revocation_is_acknowledged_only_once_a_replica_has_it(
    settings: Settings,
) -> None:
    """Replica stalled: the revocation raises (not acknowledged); resumed: the same revocation,
    retried, is acknowledged and the replica holds its record and the quarantine."""
    store, agent = RedisGrantStore.from_url(settings.redis_url), unique("replicated")
    _master, replica = _master_and_replica(settings, agent)
    now = datetime.now(UTC)
    plan = plan_revocation(unique("signal"), agent, ACTION, now=now, max_grant_s=600,
                           margin_s=60)
    try:
        with _stalled(replica), pytest.raises(StoreUnavailable, match="no replica confirmed"):
            await store.revoke_all(plan)
        assert await store.revoke_all(plan) == ()  # the retry: acknowledged
        assert _replica_has(replica, keys.revocation(agent, plan.cause_id), settings)
        assert _replica_has(replica, keys.quarantine(agent), settings)
        assert (await store.agent_state(agent)).quarantine_rule == "test-quarantine"
    finally:
        await store.aclose()
