"""Kafka users of a local stack: one password per role, in <stack_dir>/kafka/credentials.json.

Imports stdlib, broker.config, broker.errors, the Kafka access and the topic registry's roles.
Processes the stack tooling starts (worker, CLI, API, demo, benchmarks, tests) each get the
credentials of their role (``role_access``). A stack without that file has no users: every role
connects as the settings say.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.adapters.kafka.access import KafkaAccess
from broker.config import Settings
from broker.errors import ConfigError
from schemas.topics import ROLES


@dataclass(frozen=True)
class Credentials:
    """The SCRAM password of every role of one cluster (never shown in a repr)."""

    passwords: Mapping[str, str] = field(repr=False)

    def access(self, base: KafkaAccess, role: str) -> KafkaAccess:
        """``base`` (the cluster) as the user of ``role``."""
        if role not in ROLES:
            raise ConfigError(f"no Kafka role {role!r}; the roles are {', '.join(ROLES)}")
        return base.as_user(role, self.passwords[role])

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
        return cls({role: data[role] for role in ROLES})


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
