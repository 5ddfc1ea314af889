"""Kafka users of a local stack: one password per role, in <stack_dir>/kafka/credentials.json.

Imports stdlib, broker.config, broker.errors, the Kafka access and the topic registry's roles.
The stack generates a random password per role (and for the brokers' own users: ``broker``
between brokers, ``controller`` on the controller listener) once, writes them 0600 and creates
the users. Processes the stack tooling starts (worker, CLI, API, demo, benchmarks, tests) each
get the credentials of their role (``role_access``). Each tenant declared on the stack gets
its own agent, service and operator users (``agent@acme``, ``service@acme``,
``operator@acme``), added to the same file when the stack provisions the tenant. A stack
without that file has no users: every role connects as the settings say. The stack's Redis
has the same users (broker/stack/redisusers.py): a process is handed a Redis URL that logs in
as its role (``redis_of``).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.redis.calls import as_user, has_user
from broker.config import Settings
from broker.errors import ConfigError
from schemas.topics import DEFAULT_TENANT, ROLES, TENANT_PRINCIPALS, role_of, tenant_role

# The brokers' own users, never handed to a process: ``broker`` (SCRAM, inter-broker) and
# ``controller`` (PLAIN, static, the controller listener). Both are super users.
BROKER, CONTROLLER = "broker", "controller"
INTERNAL = (BROKER, CONTROLLER)


@dataclass(frozen=True)
class Credentials:
    """The SCRAM password of every role of one cluster (never shown in a repr)."""

    passwords: Mapping[str, str] = field(repr=False)

    def access(self, base: KafkaAccess, role: str) -> KafkaAccess:
        """``base`` (the cluster) as the user of ``role`` (or of a tenant's ``agent@acme``)."""
        if role_of(role)[0] not in ROLES:
            raise ConfigError(f"no Kafka role {role!r}; the roles are {', '.join(ROLES)}")
        return base.as_user(role, self.password(role))

    def with_tenants(self, tenants: Iterable[str]) -> Credentials:
        """These passwords and one (kept if there, else new) for each tenant's principals."""
        wanted = {tenant_role(role, t) for t in tenants if t != DEFAULT_TENANT
                  for role in TENANT_PRINCIPALS}
        return Credentials({**{u: secrets.token_urlsafe(24) for u in wanted},
                            **self.passwords})

    @classmethod
    def read(cls, path: Path) -> Credentials | None:
        """The credentials kept at ``path``, or None when there is no such file."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the Kafka credentials in {path}: {exc}") from exc
        missing = [role for role in ROLES if not isinstance(data.get(role), str)]
        if missing:
            raise ConfigError(f"{path} lacks the password of {', '.join(missing)}")
        return cls({user: pw for user, pw in data.items() if isinstance(pw, str)})

    @classmethod
    def generate(cls) -> Credentials:
        """A fresh random password for every role and internal user (URL-safe characters only:
        they go into JAAS strings and ``--add-scram`` specs unquoted)."""
        return cls({user: secrets.token_urlsafe(24) for user in (*ROLES, *INTERNAL)})

    def write(self, path: Path) -> None:
        """Write the passwords to ``path``, readable by this user only (0600 from the start)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dict(self.passwords), f, indent=2)
        tmp.replace(path)

    def password(self, user: str) -> str:
        """One user's password (ConfigError when the file has none for it)."""
        try:
            return self.passwords[user]
        except KeyError:
            raise ConfigError(f"no Kafka password for the user {user!r}") from None

    def users(self) -> dict[str, str]:
        """The SCRAM users to create: every role, every tenant principal kept here, and the
        inter-broker user."""
        tenants = [u for u in self.passwords if role_of(u)[1] != DEFAULT_TENANT]
        return {user: self.password(user) for user in (*ROLES, *sorted(tenants), BROKER)}


def credentials_file(settings: Settings) -> Path:
    """Where the tooling finds the Kafka users' passwords (by default: in the stack dir)."""
    if settings.kafka_credentials_file is not None:
        return settings.kafka_credentials_file
    return settings.stack_dir.expanduser().resolve() / "kafka" / "credentials.json"


def role_access(settings: Settings, role: str) -> KafkaAccess:
    """How a process of ``role`` reaches the stack of ``settings`` (its user, when there are)."""
    base = KafkaAccess.from_settings(settings)
    credentials = Credentials.read(credentials_file(settings))
    return credentials.access(base, role) if credentials is not None else base


def role_settings(settings: Settings, role: str) -> Settings:
    """``settings`` with the Kafka user of ``role`` (for a process built from Settings alone),
    and its Redis user when the Redis has users (``redis_of``)."""
    kafka = role_access(settings, role)
    return settings.model_copy(update={
        "kafka_security_protocol": kafka.security_protocol,
        "kafka_sasl_mechanism": kafka.sasl_mechanism, "kafka_username": kafka.username,
        "kafka_password": SecretStr(kafka.password) if kafka.password else None,
        "redis_url": redis_of(settings.redis_url, kafka)})


def redis_of(url: str, kafka: KafkaAccess) -> str:
    """The Redis ``url`` as the process whose Kafka user is ``kafka``'s: a Redis with users
    (``url`` names one) has each role's Kafka user, with the same password
    (broker/stack/redisusers.py); a Redis without users is reached as ``url`` says."""
    if not has_user(url) or not kafka.username:
        return url
    return as_user(url, kafka.username, kafka.password)
