"""The stateful model's world: a private redis-server, the real worker handlers on it.

Imports broker, streams, schemas, tests. Every message the model delivers is signed by its
author and passes the worker's own identity gate (tests/support/faults/model/gate.py); every
record the worker writes is signed by the broker's key and read back through the decode edge,
verified. ``World`` has no Kafka in the loop: ``publish`` captures every event the worker code
emits (in order, per topic), so the grant events can be folded by the product's own rebuild
(``broker.adapters.kafka.rebuild``); tests/support/faults/model/kafka_world.py puts a real Kafka in
it. Time is Redis's real clock (the one that expires the keys); the model moves it forward only
by waiting, bounded, for a grant's expiry to pass.
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

from broker.adapters.kafka import codec, edge
from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.rebuild import apply, fold
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.adapters.redis.store import RedisGrantStore
from broker.policy import Policy
from schemas import topics
from schemas.events import WireModel
from streams.escalations import Escalations
from streams.lifecycle import Lifecycle
from streams.risk import Risk
from streams.worker import Incoming, WorkerContext
from tests.support.faults.model.gate import Identities
from tests.support.faults.model.spec import AGENTS
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
    """Every record the worker code published, per topic, in order, as its readers read it."""

    trust: edge.Trust  # the broker's chain of trust: what the worker writes must verify
    records: dict[str, list[Record]] = field(default_factory=dict)

    async def publish(self, topic: str, messages: Sequence[codec.Encoded]) -> None:
        """The worker's publisher: read each message back through the decode edge (signature
        and all: it must pass) and keep it."""
        kept = self.records.setdefault(topic, [])
        for m in messages:
            rec = edge.read(topic, 0, len(kept), int(time.time() * 1000), m.key, m.value,
                            m.headers, trust=self.trust, reader="props")
            assert rec.event is not None, f"the worker wrote what its readers refuse on " \
                f"{topic}: {rec.reason}: {rec.error}"
            kept.append(rec)

    async def publish_many(self, messages: Sequence[tuple[str, codec.Encoded]]) -> None:
        """``publish`` for (topic, message) pairs, in order."""
        for topic, message in messages:
            await self.publish(topic, [message])

    def events(self, topic: str) -> list[WireModel]:
        """The decoded events of one topic."""
        return [r.event for r in self.records.get(topic, []) if r.event is not None]


# SCAN the keys matching ARGV[1]; return those without an expiry (PTTL -1).
_KEYS_WITHOUT_TTL = """
local found, cursor = {}, '0'
repeat
  local page = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = page[1]
  for _, name in ipairs(page[2]) do
    if redis.call('PTTL', name) == -1 then found[#found + 1] = name end
  end
until cursor == '0'
return found
"""


class World:
    """One example's broker: a flushed Redis, the worker's gate and handlers on it, a loop."""

    suffix = ""  # added to the model's agent names (worlds whose log outlives an example)

    def __init__(self, url: str, policy: Policy, ids: Identities) -> None:
        self.agents = {name: f"{name}{self.suffix}" for name in AGENTS}
        for name, cls in AGENTS.items():
            ids.register(self.agents[name], cls)
        self.loop = asyncio.new_event_loop()
        self.sync = redis.Redis.from_url(url)
        self.sync.flushall()
        self.rebuilt_url = url.rsplit("/", 1)[0] + "/1"  # db 1: where rebuilds are compared
        self.store = RedisGrantStore.from_url(url, margin_s=MARGIN_S)
        self.ids = ids
        self.trust = ids.trust()
        self.bus = self._bus()
        self.ctx = WorkerContext(policy, self.store, self.bus, margin_s=MARGIN_S,
                                 rebuild=self._rebuild_live, signer=ids.signer(),
                                 trust=self.trust)
        self.gate, self._nonces = ids.gate(url, self.ctx.audit, self.ctx.count)
        self.lifecycle = Lifecycle(self.ctx, self.gate,
                                   LifecycleStore(self.store, margin_s=MARGIN_S))
        self.escalations = Escalations(self.ctx, self.gate,
                                       grant_requests=self.lifecycle.on_request)
        self.risk = Risk(self.ctx, self.gate)
        self.offsets: dict[str, int] = {}
        self.run(self.store.mark_built(self.redis_now()))
        self.ctx.ready.set()

    def _bus(self) -> Captured:
        return Captured(self.trust)

    def run(self, coro: Awaitable[T]) -> T:
        """Run one coroutine of the worker code to completion."""
        return self.loop.run_until_complete(coro)  # type: ignore[arg-type]

    def redis_now(self) -> datetime:
        """Redis's clock: the one that expires every key."""
        sec, usec = self.sync.time()
        return datetime.fromtimestamp(int(sec) + int(usec) / 1e6, tz=UTC)

    def pexpiretimes(self, names: Sequence[str], *, exists: bool = False) -> list[int]:
        """PEXPIRETIME (or EXISTS) of each key, in one round trip."""
        pipe = self.sync.pipeline(transaction=False)
        for name in names:
            pipe.exists(name) if exists else pipe.pexpiretime(name)
        return [int(v) for v in pipe.execute()]

    def keys_without_ttl(self) -> list[str]:
        """Per-agent keys (grants, markers, records, indexes) that would live forever (the whole
        scan in one script: this invariant is checked after every step)."""
        found = self.sync.eval(_KEYS_WITHOUT_TTL, 0, keys.AGENT_KEY_PATTERN)
        return [n.decode() for n in found]

    def events(self, topic: str) -> list[WireModel]:
        """Every event the worker code published to ``topic``, in order."""
        return self.bus.events(topic)

    def incoming(self, topic: str, event: WireModel, received_at: datetime, *,
                 forged_by: str | None = None) -> Incoming:
        """The message as Kafka would hand it over, signed by its author as of ``received_at``
        (or with ``forged_by``'s key: another agent's), appended at ``received_at``."""
        encoded = codec.encode(event, source="/tests/props")
        signed = self.ids.forge(encoded, forged_by, received_at) if forged_by else \
            self.ids.sign(event, encoded, received_at)
        return self.append(topic, signed, received_at)

    def append(self, topic: str, message: codec.Encoded, received_at: datetime) -> Incoming:
        """``message`` appended to ``topic`` at ``received_at``, at the next offset."""
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return Incoming(topic, 0, offset, received_at.timestamp(), message.key, message.value,
                        message.headers)

    def replayed(self, msg: Incoming) -> Incoming:
        """The same bytes (signature and all) appended again now: a replay, not a redelivery."""
        message = codec.Encoded(msg.key, msg.value or b"", list(msg.headers))
        return self.append(msg.topic, message, self.redis_now())

    def grant_records(self) -> list[Record]:
        """The grant topic as a rebuild would read it."""
        return list(self.bus.records.get(topics.GRANTS.name, []))

    def audit_records(self) -> list[Record]:
        """The raw audit topic as a rebuild would read it (the live risk it noted)."""
        return list(self.bus.records.get(topics.AUDIT_RAW.name, []))

    async def _rebuild_live(self) -> int:
        now = await self.store.now()
        return await apply(self.store, fold(self.grant_records(), now, self.audit_records()), now)

    def rebuild_elsewhere(self, now: datetime) -> RedisGrantStore:
        """Fold the grant topic into an empty db 1, as ``grants rebuild`` would."""
        other = redis.Redis.from_url(self.rebuilt_url)
        other.flushdb()
        other.close()
        store = RedisGrantStore.from_url(self.rebuilt_url, margin_s=MARGIN_S)
        self.run(apply(store, fold(self.grant_records(), now, self.audit_records()), now))
        return store

    def close(self) -> None:
        """Close the clients and the loop."""
        self.run(self.store.aclose())
        self.run(self._nonces.aclose())
        self.sync.close()
        self.loop.close()


async def close_store(store: RedisGrantStore) -> None:
    """Close a store's client (helper for stores made by ``rebuild_elsewhere``)."""
    await store.aclose()


__all__ = ["Captured", "World", "close_store", "redis_server"]
