"""The settings of one CLI invocation, read once at its entry. Imports broker.config, kafka access.

Also imports the JWKS view. ``permbroker``'s root callback (and ``python -m broker.cli.ops.stack``)
reads the settings once and hands them to ``use_settings``; every command asks ``cli_settings()``
for them, and ``cli_kafka()`` for the Kafka access they describe (built on first use, so commands
that never touch Kafka never trip over its settings). (Context variables, not click's context
object: Typer vendors its own click.) A command that reads what the broker wrote verifies it
with ``trusted()``: the chain of trust from the settings' anchor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import probe
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings

_SETTINGS: ContextVar[Settings] = ContextVar("permbroker_cli_settings")
_KAFKA: ContextVar[KafkaAccess | None] = ContextVar("permbroker_cli_kafka", default=None)
T = TypeVar("T")
_PROBE_TIMEOUT_S = 5.0


def use_settings(settings: Settings) -> None:
    """Make ``settings`` this invocation's (called by the entry point only)."""
    _SETTINGS.set(settings)
    _KAFKA.set(None)


def cli_settings() -> Settings:
    """The settings this invocation read at its entry point."""
    try:
        return _SETTINGS.get()
    except LookupError as exc:
        raise RuntimeError("no settings for this command: run it through permbroker") from exc


def cli_kafka() -> KafkaAccess:
    """How this invocation reaches Kafka (ConfigError when the settings contradict each other).

    The first call checks that Kafka answers and accepts the credentials, so a command fails
    within seconds naming the cause (KafkaUnreachable, KafkaRefused) instead of timing out on
    whichever read or write it tried first.
    """
    kafka = _KAFKA.get()
    if kafka is None:
        kafka = KafkaAccess.from_settings(cli_settings())
        probe(kafka, timeout=_PROBE_TIMEOUT_S)
        _KAFKA.set(kafka)
    return kafka


@contextmanager
def trusted() -> Iterator[RecordTrust]:
    """The broker's chain of trust for this invocation's reads (KeyFileError without anchor)."""
    with JwksView.from_settings(cli_settings(), cli_kafka()) as view:
        yield view.trust


def read_trusted(read: Callable[[RecordTrust], T]) -> T:
    """``read(trust)`` with this invocation's chain of trust, closed afterwards."""
    with trusted() as trust:
        return read(trust)
