"""Redis clients and the one translation of Redis errors. Imports redis, broker.errors and the
keyspace.

Every Redis adapter calls Redis through ``call`` (or, around a synchronous client or a loop,
``translated``): a Redis that cannot answer raises ``StoreUnavailable``, which callers turn into
a denial with the reason (fail closed), never an allow.

Every client is made by ``async_client`` / ``sync_client``: a URL with a cluster scheme
(``redis+cluster://host:port`` or ``rediss+cluster://``, any node of the cluster) gets redis-py's
``RedisCluster``, which routes each command and script by its keys' slot and follows failovers;
any other URL a single-node client. The stores use the same calls on both.

A cluster replicates asynchronously: a write a master acknowledged is lost if that master dies
before a replica has it. A write that must survive a failover (a revocation, a quarantine) goes
through ``replicated``: on a cluster it counts as done only once ``WAIT`` confirms a replica has
it, else it raises ``StoreUnavailable`` and the caller retries it (the scripts are idempotent).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast
from urllib.parse import quote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconnection
import redis.connection as syncconnection
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from broker.adapters.redis import keyspace as keys
from broker.errors import StoreRefused, StoreUnavailable

# What a Redis that cannot answer raises (a cluster's routing errors are not RedisErrors).
ERRORS = (RedisError, RedisClusterException, OSError)
# How long a replicated write waits for a replica of its master to confirm it (below the
# clients' 2 s socket timeout): past it the write is not acknowledged and is retried.
REPLICA_ACK_MS = 1000


@contextmanager
def translated(what: str = "") -> Iterator[None]:
    """Raise ``StoreUnavailable`` (naming ``what`` was asked) for any Redis or socket error,
    ``StoreRefused`` when Redis refused the login or the command (the client's user)."""
    try:
        yield
    except (AuthenticationError, NoPermissionError) as exc:
        raise StoreRefused(f"{what + ': ' if what else ''}{_refusal(exc)}") from exc
    except ERRORS as exc:
        raise StoreUnavailable(f"{what + ': ' if what else ''}Redis did not answer: {exc}") \
            from exc
    except (AttributeError, TypeError) as exc:
        if not _in_connection_layer(exc):
            raise
        raise StoreUnavailable(f"{what + ': ' if what else ''}Redis connection closed under "
                               f"the command: {exc!r}") from exc


def _refusal(exc: RedisError) -> str:
    if isinstance(exc, NoPermissionError):
        return f"Redis refused the command to this client's user: {exc}"
    text = str(exc)
    if "NOAUTH" in text or "must be called with the client already authenticated" in text:
        return f"Redis refused a client that did not log in (the URL names no user): {exc}"
    return f"Redis refused the login: {exc}"


# redis-py's connection modules: a connection closed by another task while this one writes on
# it (the cluster client disconnects a failed node's connections during a failover) surfaces
# there as an AttributeError or TypeError on the vanished stream, not as a ConnectionError.
_CONNECTION_FILES = frozenset({aioconnection.__file__, syncconnection.__file__})


def _in_connection_layer(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while inside one of redis-py's connection modules."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _CONNECTION_FILES:
            return True
        tb = tb.tb_next
    return False


async def call(awaitable: Any, what: str = "") -> Any:
    """Await one Redis command, script or pipeline, its errors translated by ``translated``."""
    with translated(what):
        return await awaitable


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


async def send_packed(client: aioredis.Redis, command: bytes) -> Any:
    """Send one command already packed in RESP on a connection of ``client``'s pool and
    return its reply (single node only). A connection an error interrupted is dropped (an
    error reply leaves it usable)."""
    pool: Any = client.connection_pool  # redis-py's pool is partly untyped
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command(command)
        return await conn.read_response()
    except ResponseError:
        raise
    except BaseException:
        await conn.disconnect()
        raise
    finally:
        await pool.release(conn)


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
    """Close a blocking client and, for a cluster client, every node's connection pool.

    redis-py's ``RedisCluster.close`` only hands each node's connection back to its pool, and
    the startup nodes are not among them: a pool the node client was given (a client made from
    a URL) is never closed by it, so its sockets stay open. Every pool is disconnected here.
    """
    nodes: list[Any] = []
    if isinstance(client, redis.RedisCluster):
        manager = client.nodes_manager
        nodes = [*manager.startup_nodes.values(), *manager.nodes_cache.values()]
    client.close()
    for node in nodes:
        if node.redis_connection is not None:
            node.redis_connection.close()
            node.redis_connection.connection_pool.disconnect()


def ping(url: str, timeout: float = 2.0) -> None:
    """``StoreUnavailable`` unless the Redis at ``url`` answers (a process's startup check)."""
    client = sync_client(url, timeout)
    try:
        with translated(f"Redis at {shown(url)}"):
            client.ping()
    finally:
        close(client)


def shown(url: str) -> str:
    """``url`` as it may be printed or logged: its password masked."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def has_user(url: str) -> bool:
    """Whether ``url`` names a Redis user (the server has users: a process logs in as one)."""
    return urlsplit(url).username is not None


def as_user(url: str, user: str, password: str) -> str:
    """``url`` logging in as ``user`` (whatever user it named before)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}"
                                            f"@{host}"))


async def replicated(client: aioredis.Redis, script: AsyncScript, agent_id: str,
                     script_keys: list[str], args: list[Any], what: str = "") -> Any:
    """Run ``script`` on the agent's slot; on a cluster, return only once a replica has it.

    On one node this is the plain script call. On a cluster the script, a write of the agent's
    ``replica_ack`` key and ``WAIT 1`` go on one connection to the slot's master: WAIT counts the
    replicas that have every write of that connection, and the extra write makes it cover the
    script's writes even when the script is a redelivery that writes nothing (its first run's
    writes precede it in the replication stream). No replica in ``REPLICA_ACK_MS``, a moved slot
    or a dead master: ``StoreUnavailable``, never an acknowledgement.
    """
    if not is_cluster(client):
        return await call(script(keys=script_keys, args=args), what)
    cluster, ack = cast(aioredis.RedisCluster, client), keys.replica_ack(agent_id)
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", script.sha, len(script_keys), *script_keys, *args),
        ("SET", ack, "1", "PX", 60_000),
        ("WAIT", 1, REPLICA_ACK_MS),
    ]
    with translated(what):
        for _ in range(2):
            await cluster.initialize()  # no-op once the slot table is known
            try:
                got = await _on_master(cluster, ack, commands)
            except ERRORS:
                await _relearn(cluster, ack)
                raise
            if isinstance(got[0], NoScriptError):
                await cluster.script_load(script.script)
                continue
            failed = next((r for r in got if isinstance(r, Exception)), None)
            if failed is not None:
                await _relearn(cluster, ack)
                raise StoreUnavailable(f"{what + ': ' if what else ''}not applied: {failed}")
            if int(got[2]) < 1:
                raise StoreUnavailable(
                    f"{what + ': ' if what else ''}no replica confirmed the write within "
                    f"{REPLICA_ACK_MS} ms (a failover could lose it): not acknowledged, retried")
            return got[0]
    raise StoreUnavailable("Redis lost the script twice in a row")


async def _relearn(cluster: aioredis.RedisCluster, key: str) -> None:
    """A routed command on ``key``: the cluster client follows a moved slot or a failover and
    updates its slot table, so the next attempt goes to the slot's new master."""
    with suppress(*ERRORS):
        await cluster.exists(key)


async def _on_master(cluster: aioredis.RedisCluster, key: str,
                     commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` on one connection to the master of ``key``'s slot; their replies
    (an error reply as its exception, the connection's errors raised)."""
    node = cluster.get_node_from_key(key)
    if node is None:
        raise redis.ConnectionError(f"no master serves the slot of {key} now")
    conn = node.acquire_connection()
    try:
        await conn.send_packed_command(conn.pack_commands(commands))
        out: list[Any] = []
        for _ in commands:
            try:
                out.append(await conn.read_response())
            except RedisError as exc:
                if not isinstance(exc, redis.ResponseError):
                    raise
                out.append(exc)
        return out
    except BaseException:  # a connection in an unknown state is never reused
        await conn.disconnect()
        raise
    finally:
        node.release(conn)
