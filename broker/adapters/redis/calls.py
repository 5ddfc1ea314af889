"""Redis clients and the one translation of Redis errors. Imports redis, broker.errors.

Every Redis adapter calls Redis through ``call`` (or, around a synchronous client or a loop,
``translated``): a Redis that cannot answer raises ``StoreUnavailable``, which callers turn into
a denial with the reason (fail closed), never an allow.

Every client is made by ``async_client`` / ``sync_client``: a URL with a cluster scheme
(``redis+cluster://host:port`` or ``rediss+cluster://``, any node of the cluster) gets redis-py's
``RedisCluster``, which routes each command and script by its keys' slot and follows failovers;
any other URL a single-node client. The stores use the same calls on both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
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


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str | None:
    """The plain URL of a cluster node when ``url`` has a cluster scheme, else None."""
    parts = urlsplit(url)
    plain = CLUSTER_SCHEMES.get(parts.scheme)
    return urlunsplit(parts._replace(scheme=plain)) if plain else None


def async_client(url: str, timeout: float = 2.0) -> aioredis.Redis:
    """An asyncio client for ``url``: a cluster client for a cluster scheme.

    The cluster client is typed as the single-node one: it offers the same commands, pipelines
    and scripts the stores use (routing each by its keys' slot).
    """
    node = cluster_url(url)
    if node is None:
        return aioredis.Redis.from_url(url, socket_timeout=timeout,
                                       socket_connect_timeout=timeout)
    return cast(aioredis.Redis, aioredis.RedisCluster.from_url(
        node, socket_timeout=timeout, socket_connect_timeout=timeout))


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a cluster client: its pipelines cannot carry scripts or TIME."""
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)


def sync_client(url: str, timeout: float = 2.0) -> redis.Redis:
    """A blocking client for ``url``: a cluster client for a cluster scheme."""
    node = cluster_url(url)
    if node is None:
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    return cast(redis.Redis, redis.RedisCluster.from_url(
        node, socket_timeout=timeout, socket_connect_timeout=timeout))


def close(client: redis.Redis) -> None:
    """Close a blocking client; a cluster client's startup-node connections too (redis-py's
    ``RedisCluster.close`` leaves them open)."""
    client.close()
    if isinstance(client, redis.RedisCluster):
        for node in client.nodes_manager.startup_nodes.values():
            if node.redis_connection is not None:
                node.redis_connection.close()


def ping(url: str, timeout: float = 2.0) -> None:
    """``StoreUnavailable`` unless the Redis at ``url`` answers (a process's startup check)."""
    client = sync_client(url, timeout)
    try:
        with translated(f"Redis at {_without_password(url)}"):
            client.ping()
    finally:
        close(client)


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
