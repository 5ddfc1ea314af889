"""The stack's Redis users: one per role that uses the store, the password of its Kafka user,
hashed in the ACL file; the URL a process is handed logs in as its own role, never shown."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from redis.exceptions import AuthenticationError, NoPermissionError

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.redis.calls import as_user, has_user, shown, translated
from broker.config import Settings
from broker.errors import StoreRefused, StoreUnavailable
from broker.stack import rediscluster, redisusers
from broker.stack.credentials import Credentials, redis_of, role_settings
from schemas import topics


def _credentials() -> Credentials:
    return Credentials.generate().with_tenants(["acme"])


def test_each_role_that_uses_the_store_has_a_user_and_the_default_user_is_off(
    tmp_path: Path,
) -> None:
    creds = _credentials()
    users = redisusers.users(creds)
    assert set(users) == {topics.ADMIN, topics.WORKER, topics.API, topics.OPERATOR,
                          topics.SERVICE, "service@acme", "operator@acme"}  # no agent@acme
    path = redisusers.write_acl_file(tmp_path / "redis" / "users.acl", creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.splitlines()[0] == "user default off nopass nocommands"
    for user, password in creds.passwords.items():
        assert password not in text  # hashed only
        if user in users:
            assert f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} " in text
    assert "-@dangerous" in " ".join(users[topics.WORKER])
    assert users["service@acme"][2:4] == ["%R~pb:{acme:*}:grant:*", "~pb:{acme:*}:budget:*"]
    assert "%R~pb:{*}:grant:*" in users[topics.SERVICE] and "~pb:*" not in users[topics.SERVICE]
    # acme's operator reads acme's agents' keys only, writes none, lists none.
    assert [r for r in users["operator@acme"] if "~" in r] == ["%R~pb:{acme:*}:*"]
    assert {"-scan", "-randomkey", "-@dangerous"} <= set(users["operator@acme"])


def test_a_process_is_handed_the_url_of_its_own_role_only_where_redis_has_users() -> None:
    creds = _credentials()
    admin = redisusers.url_of("redis://127.0.0.1:16379/0", creds, topics.ADMIN)
    assert has_user(admin) and not has_user("redis://127.0.0.1:16379/0")
    worker = KafkaAccess("k:9092").as_user("worker", creds.password("worker"))
    assert redis_of(admin, worker) == f"redis://worker:{creds.password('worker')}@127.0.0.1:16379/0"
    assert redis_of("redis://127.0.0.1:16379/0", worker) == "redis://127.0.0.1:16379/0"
    assert redis_of(admin, KafkaAccess("k:9092")) == admin  # no Kafka user: as given
    tenant = as_user("redis+cluster://h:7000/0", "service@acme", "p/w@:x")
    assert tenant == "redis+cluster://service%40acme:p%2Fw%40%3Ax@h:7000/0"


def test_role_settings_swap_the_redis_user_with_the_kafka_user(tmp_path: Path) -> None:
    creds = _credentials()
    creds.write(tmp_path / "credentials.json")
    base = Settings(kafka_credentials_file=tmp_path / "credentials.json",
                    redis_url=redisusers.url_of("redis://127.0.0.1:1/0", creds, topics.ADMIN),
                    kafka_password=SecretStr("x"))
    api = role_settings(base, topics.API)
    assert api.kafka_username == "api"
    assert api.redis_url == f"redis://api:{creds.password('api')}@127.0.0.1:1/0"


def test_a_url_is_shown_without_its_password() -> None:
    assert shown("redis://worker:s3cret@127.0.0.1:1/0") == "redis://worker:***@127.0.0.1:1/0"
    assert shown("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(("error", "says"), [
    (AuthenticationError("invalid username-password pair or user is disabled."),
     "Redis refused the login: invalid username-password pair"),
    (AuthenticationError("HELLO must be called with the client already authenticated, ..."),
     "Redis refused a client that did not log in (the URL names no user)"),
    (NoPermissionError("this user has no permissions to access one of the keys"),
     "Redis refused the command to this client's user"),
])
def test_a_refusal_says_which_one_and_is_a_store_refusal(error: Exception, says: str) -> None:
    with pytest.raises(StoreRefused) as refused, translated("reading a grant"):
        raise error
    assert str(refused.value).startswith(f"reading a grant: {says}")
    assert isinstance(refused.value, StoreUnavailable)  # callers fail closed as when it is down


def test_cluster_nodes_get_the_users_and_replicas_log_in_as_admin(tmp_path: Path) -> None:
    creds = _credentials()
    config = rediscluster._users(tmp_path, creds)
    assert config == [str(tmp_path / "users.conf")]  # a config file is redis-server's first arg
    assert rediscluster._argv(7000, tmp_path, config)[1] == config[0]
    lines = (tmp_path / "users.conf").read_text().splitlines()
    assert lines == [f"aclfile {tmp_path / 'users.acl'}", "masteruser admin",
                     f"masterauth {creds.password('admin')}"]
    for name in ("users.conf", "users.acl"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert rediscluster._users(tmp_path, None) == []  # the tests' own clusters: no users
    assert rediscluster.url(7000, creds, "worker") == \
        f"redis+cluster://worker:{creds.password('worker')}@127.0.0.1:7000/0"
