"""Redis as the stack starts it authenticates every client and lets each role do its part only.

Nobody gets in without logging in (the default user is off); a wrong password is refused; a
resource service's user may count budget uses but cannot write a grant, a decision or a
revocation marker, nor list key names; the broker's roles cannot flush, reconfigure or list
keys with KEYS; and each process the tooling starts logs in as its own role (the worker as
``worker``).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import as_user, sync_client, translated
from broker.config import Settings
from broker.errors import StoreRefused
from broker.stack import redisusers
from broker.stack.credentials import Credentials, role_settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.services import Services, unique
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def _client(settings: Settings, role: str) -> redis.Redis:
    return sync_client(role_settings(settings, role).redis_url)


def test_no_client_gets_in_without_its_password(services: Services) -> None:
    anonymous = redis.Redis.from_url("redis://" + services.redis_url.rsplit("@", 1)[1])
    wrong = redis.Redis.from_url(as_user(services.redis_url, topics.WORKER, "not-the-password"))
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            wrong.ping()
        with pytest.raises(StoreRefused, match="Redis refused"), translated("a test"):
            wrong.get(keys.revoked("someone"))
    finally:
        anonymous.close()
        wrong.close()


def test_a_services_user_counts_budget_uses_and_writes_nothing_else(settings: Settings) -> None:
    agent = unique("svc")
    service = _client(settings, topics.SERVICE)
    try:
        service.hset(keys.budget(agent, "g-1"), "left:payments:accounts.freeze", 3)
        service.pexpire(keys.budget(agent, "g-1"), 60_000)  # no key without a TTL
        assert service.get(keys.grant(agent, "g-1")) is None  # it may read a grant
        for key in (keys.grant(agent, "g-1"), keys.decision(agent, "req-1"),
                    keys.revoked(agent), keys.life(agent, "g-1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                service.set(key, "forged")
        with pytest.raises(redis.exceptions.NoPermissionError):
            service.get(keys.decision(agent, "req-1"))
        for listing in (lambda: service.scan(0, match="pb:*"), service.randomkey,
                        lambda: service.keys("pb:*")):  # no agent's, no grant's id
            with pytest.raises(redis.exceptions.NoPermissionError):
                listing()
        with pytest.raises(StoreRefused), translated():
            service.delete(keys.revoked(agent))
    finally:
        service.close()


@pytest.mark.parametrize("role", [topics.WORKER, topics.API, topics.OPERATOR])
def test_the_brokers_roles_use_the_store_but_cannot_flush_or_reconfigure_it(
    settings: Settings, role: str,
) -> None:
    client = _client(settings, role)
    try:
        key = keys.risk(unique(role))
        client.set(key, "1", px=60_000)
        assert client.get(key) == b"1"
        assert client.config_get("maxmemory-policy")  # the startup check
        for refused in (client.flushall, client.flushdb, lambda: client.keys("*"),
                        lambda: client.config_set("maxmemory-policy", "allkeys-lru"),
                        lambda: client.set("not-pb:thing", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
    finally:
        client.close()


def test_an_agents_user_has_no_way_into_the_store(settings: Settings) -> None:
    agent = _client(settings, topics.AGENT)
    try:
        with pytest.raises(redis.AuthenticationError):
            agent.ping()
    finally:
        agent.close()


def test_the_worker_process_logs_in_as_the_worker(services: Services,
                                                   worker: WorkerProcess) -> None:
    admin = redis.Redis.from_url(services.redis_url)
    try:
        users = {c.get("user") for c in admin.client_list()}
    finally:
        admin.close()
    assert topics.WORKER in users, users


def test_a_tenants_service_user_counts_its_own_tenants_budgets_only(settings: Settings) -> None:
    client = _client(settings, "service@acme")
    try:
        agent = f"acme:{unique('svc')}"
        assert client.hincrby(keys.budget(agent, "g-1"), "left:x", 1) == 1
        client.pexpire(keys.budget(agent, "g-1"), 60_000)
        assert client.get(keys.grant(agent, "g-1")) is None
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set(keys.grant(agent, "g-1"), "forged")
        for other in (f"globex:{unique('svc')}", unique("svc"), f"acmecorp:{unique('svc')}"):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.hincrby(keys.budget(other, "g-1"), "left:x", 1)
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.get(keys.grant(other, "g-1"))
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.scan(0, match="pb:{globex:*")  # another tenant's agents' names
    finally:
        client.close()


def test_a_redis_without_users_gets_them_once_and_then_refuses_the_default_user(
    tmp_path: Path,
) -> None:
    """What ``stack up`` does to a Redis started before the stack had users: the users are
    created through the open default user, which is then off; again, as admin, nothing
    changes."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    credentials = Credentials.generate()
    bare = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _answers(bare), 10, "the throwaway redis-server answers")
        open_door = redis.Redis.from_url(bare)
        assert set(redisusers.apply(open_door, credentials)) == set(redisusers.RULES)
        open_door.close()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(bare).ping()
        admin = redis.Redis.from_url(redisusers.url_of(bare, credentials, topics.ADMIN))
        assert redisusers.apply(admin, credentials) == []
        admin.close()
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
