"""The one translation of Redis errors: every Redis or socket failure is StoreUnavailable."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError, TimeoutError

from broker.adapters.redis.calls import call, translated
from broker.errors import StoreUnavailable


async def _failing(exc: BaseException) -> None:
    raise exc


@pytest.mark.parametrize(
    "exc",
    [RedisConnectionError("refused"), TimeoutError("slow"), ResponseError("WRONGTYPE"),
     NoScriptError("gone"), ConnectionResetError("reset"), OSError("no route")],
    ids=lambda e: type(e).__name__,
)
async def test_every_redis_or_socket_error_becomes_store_unavailable(exc: Exception) -> None:
    """Callers fail closed on one error type; the cause stays chained for the logs."""
    with pytest.raises(StoreUnavailable, match=f"^Redis did not answer: {exc}$") as raised:
        await call(_failing(exc))
    assert raised.value.__cause__ is exc


def test_the_synchronous_form_names_what_was_asked() -> None:
    """``translated`` wraps blocking clients and loops; ``what`` prefixes the reason."""
    with pytest.raises(StoreUnavailable, match=r"^budgets: consume: Redis did not answer: x$"), \
            translated("budgets: consume"):
        raise RedisConnectionError("x")


async def test_an_answer_passes_through_and_other_errors_are_not_translated() -> None:
    """Only Redis and socket errors are translated: a bug elsewhere stays a bug."""

    async def answer() -> int:
        return 7

    assert await call(answer()) == 7
    with pytest.raises(KeyError):
        await call(_failing(KeyError("k")))


async def test_a_connection_closed_under_a_command_is_store_unavailable() -> None:
    """A connection another task closed mid-command (a failover) fails inside redis-py's
    connection module with an AttributeError on the vanished stream: not answered, retried."""
    from redis.asyncio.connection import Connection

    closed = Connection()  # never connected: its stream is None, as after a disconnect
    with pytest.raises(StoreUnavailable, match="connection closed under the command") as raised:
        await call(closed._send_packed_command([b"PING\r\n"]), "fence")
    assert isinstance(raised.value.__cause__, AttributeError)


async def test_an_attribute_error_outside_redis_py_stays_a_bug() -> None:
    """The same exception type raised by the broker's own code is not translated."""
    with pytest.raises(AttributeError):
        await call(_failing(AttributeError("broker bug")))
