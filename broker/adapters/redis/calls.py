"""The one translation of Redis errors into the broker's error tree. Imports redis, broker.errors.

Every Redis adapter calls Redis through ``call`` (or, around a synchronous client or a loop,
``translated``): a Redis that cannot answer raises ``StoreUnavailable``, which callers turn into
a denial with the reason (fail closed), never an allow.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import RedisError

from broker.errors import StoreUnavailable


@contextmanager
def translated(what: str = "") -> Iterator[None]:
    """Raise ``StoreUnavailable`` (naming ``what`` was asked) for any Redis or socket error."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"{what + ': ' if what else ''}Redis did not answer: {exc}") \
            from exc


async def call(awaitable: Any, what: str = "") -> Any:
    """Await one Redis command, script or pipeline, its errors translated by ``translated``."""
    with translated(what):
        return await awaitable


def ping(url: str, timeout: float = 2.0) -> None:
    """``StoreUnavailable`` unless the Redis at ``url`` answers (a process's startup check)."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        with translated(f"Redis at {_without_password(url)}"):
            client.ping()
    finally:
        client.close()


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
