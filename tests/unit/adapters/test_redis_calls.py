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
