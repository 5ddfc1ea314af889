"""The stateful model's world: a private redis-server, the real worker handlers on it.

Imports broker, streams, schemas, tests. No Kafka in the loop: ``publish`` captures every event
the worker code emits (in order, per topic), so the grant events can be folded by the product's
own rebuild (``broker.adapters.kafka.rebuild``). Time is Redis's real clock (the one that expires
the keys); the model moves it forward only by waiting, bounded, for a grant's expiry to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import redis

from broker.adapters.kafka import codec
from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.rebuild import apply, fold
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.adapters.redis.store import RedisGrantStore
from broker.policy import Policy
from schemas import topics
from schemas.events import WireModel
from streams.escalations import Escalations
from streams.lifecycle import Lifecycle
from streams.risk import Risk
from streams.worker import Incoming, OpenGate, WorkerContext
from tests.support.faults.ports import BASE

T = TypeVar("T")
PORT = BASE + 40  # never the session stack's, private.py's nor the cluster's ports
MARGIN_S = 600


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server (no persistence, noeviction) on PORT (or the next free of ten:
    a client's ephemeral port may hold it); yields its URL."""
    workdir = Path(tempfile.mkdtemp(prefix="permbroker-props-"))
    proc, url = _start_redis(workdir)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = workdir / "redis.log"
    for port in range(PORT, PORT + 10):
        proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory-policy", "noeviction", "--dir", str(workdir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        if _answers(url, proc):
            return proc, url
        proc.kill()
        proc.wait(timeout=30)
    told = log.read_text()[-2000:] if log.exists() else ""
    raise RuntimeError(f"no redis-server would start on ports {PORT}-{PORT + 9}: {told}")


def _answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    """Whether the server answers PING before it exits (or 30 s pass)."""
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)  # the server is still starting; bounded by the deadline
        return False
    finally:
        client.close()


@dataclass
class Captured:
    """Every event the worker code published, per topic, in order."""

    records: dict[str, list[Record]] = field(default_factory=dict)

    async def publish(self, topic: str, messages: Sequence[codec.Encoded]) -> None:
        """The worker's publisher: decode each message back (it must be valid) and keep it."""
        kept = self.records.setdefault(topic, [])
        for m in messages:
            event = codec.decode(m.key, m.value, m.headers)
            kept.append(Record(topic, 0, len(kept), int(time.time() * 1000), event, None,
                               m.value, m.key, tuple(m.headers)))

    async def publish_many(self, messages: Sequence[tuple[str, codec.Encoded]]) -> None:
        """``publish`` for (topic, message) pairs, in order."""
        for topic, message in messages:
            await self.publish(topic, [message])

    def events(self, topic: str) -> list[WireModel]:
        """The decoded events of one topic."""
        return [r.event for r in self.records.get(topic, []) if r.event is not None]


class World:
    """One example's broker: a flushed Redis, the worker's handlers on it, an event loop."""

    def __init__(self, url: str, policy: Policy) -> None:
        self.loop = asyncio.new_event_loop()
        self.sync = redis.Redis.from_url(url)
        self.sync.flushall()
        self.rebuilt_url = url.rsplit("/", 1)[0] + "/1"  # db 1: where rebuilds are compared
        self.store = RedisGrantStore.from_url(url, margin_s=MARGIN_S)
        self.captured = Captured()
        self.ctx = WorkerContext(policy, self.store, self.captured, margin_s=MARGIN_S,
                                 rebuild=self._rebuild_live)
        gate = OpenGate(policy)
        self.lifecycle = Lifecycle(self.ctx, gate, LifecycleStore(self.store, margin_s=MARGIN_S))
        self.escalations = Escalations(self.ctx, gate, grant_requests=self.lifecycle.on_request)
        self.risk = Risk(self.ctx, gate)
        self.offsets: dict[str, int] = {}
        self.run(self.store.mark_built(self.redis_now()))
        self.ctx.ready.set()

    def run(self, coro: Awaitable[T]) -> T:
        """Run one coroutine of the worker code to completion."""
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def redis_now(self) -> datetime:
        """Redis's clock: the one that expires every key."""
        sec, usec = self.sync.time()
        return datetime.fromtimestamp(int(sec) + int(usec) / 1e6, tz=UTC)

    def incoming(self, topic: str, event: WireModel, received_at: datetime) -> Incoming:
        """The message as Kafka would hand it over, appended at ``received_at``."""
        encoded = codec.encode(event, source="/tests/props")
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return Incoming(topic, 0, offset, received_at.timestamp(), encoded.key, encoded.value,
                        encoded.headers)

    def grant_records(self) -> list[Record]:
        """The grant topic as a rebuild would read it."""
        return list(self.captured.records.get(topics.GRANTS.name, []))

    async def _rebuild_live(self) -> int:
        now = await self.store.now()
        return await apply(self.store, fold(self.grant_records(), now), now)

    def rebuild_elsewhere(self, now: datetime) -> RedisGrantStore:
        """Fold the captured grant topic into an empty db 1, as ``grants rebuild`` would."""
        other = redis.Redis.from_url(self.rebuilt_url)
        other.flushdb()
        other.close()
        store = RedisGrantStore.from_url(self.rebuilt_url, margin_s=MARGIN_S)
        self.run(apply(store, fold(self.grant_records(), now), now))
        return store

    def close(self) -> None:
        """Close the clients and the loop."""
        self.run(self.store.aclose())
        self.sync.close()
        self.loop.close()


async def close_store(store: RedisGrantStore) -> None:
    """Close a store's client (helper for stores made by ``rebuild_elsewhere``)."""
    await store.aclose()


__all__ = ["Captured", "World", "close_store", "redis_server"]
