"""Observers with no polling: Redis keyspace notifications, the floor pipe, grant-view events.

Imports redis, confluent-kafka (via broker.adapters.kafka.bus), broker, schemas.

Every timestamp is ``time.perf_counter()`` taken in the observing thread the moment the event
arrives, so the driver can publish and then wait on a condition with a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

import redis
from confluent_kafka import TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, consumer, end_offsets
from broker.errors import BrokerError
from schemas.events import AgentRevoked, GrantIssued


class Stamps:
    """Times at which watched names were first seen, with waits that have a deadline."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watched: set[str] = set()
        self._seen: dict[str, float] = {}

    def watch(self, *names: str) -> None:
        """Start recording these names (call before causing them)."""
        with self._cond:
            self._watched.update(names)

    def hit(self, name: str, at: float) -> None:
        """Record that ``name`` was seen at ``at`` (first sighting wins)."""
        with self._cond:
            if name in self._watched and name not in self._seen:
                self._seen[name] = at
                self._cond.notify_all()

    def wait(self, name: str, timeout: float = 30.0) -> float:
        """When ``name`` was seen; BrokerError after ``timeout`` seconds."""
        return self.wait_all((name,), timeout)[0]

    def wait_some(self, names: Iterable[str], timeout: float) -> dict[str, float]:
        """Whichever names were seen once all were or the deadline passed (no error)."""
        wanted = list(names)
        with self._cond:
            self._cond.wait_for(lambda: all(n in self._seen for n in wanted), timeout)
            found = {n: self._seen.pop(n) for n in wanted if n in self._seen}
            self._watched.difference_update(wanted)
            return found

    def wait_all(self, names: Iterable[str], timeout: float = 60.0) -> list[float]:
        """When each name was seen, once all were; BrokerError after ``timeout`` seconds."""
        wanted = list(names)
        with self._cond:
            if not self._cond.wait_for(lambda: all(n in self._seen for n in wanted), timeout):
                missing = sum(1 for n in wanted if n not in self._seen)
                raise BrokerError(f"{missing} of {len(wanted)} awaited events never came "
                                  f"within {timeout:.0f}s (is the worker alive?)")
            out = [self._seen.pop(n) for n in wanted]
            self._watched.difference_update(wanted)
            return out


def published(key: str) -> str:
    """The name KeyWatch stamps when the decision record ``key`` is flagged as published."""
    return f"published:{key}"


class KeyWatch(Stamps):
    """Stamps Redis keys when they are written (keyspace notifications, ``K$`` enabled).

    A SET stamps the key's name; a SETRANGE (a decision record flagged as published in place)
    stamps ``published(key)``.
    """

    def __init__(self, redis_url: str, pattern: str = "pb:*") -> None:
        super().__init__()
        self._r = redis.Redis.from_url(redis_url)
        self._ps = self._r.pubsub(ignore_subscribe_messages=True)
        self._prefix = "__keyspace@0__:"
        self._ps.psubscribe(self._prefix + pattern)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-keywatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cut = len(self._prefix)
        while not self._stop.is_set():
            msg = self._ps.get_message(timeout=0.1)
            if msg is None:
                continue
            if msg["data"] == b"set":
                self.hit(msg["channel"][cut:].decode(), time.perf_counter())
            elif msg["data"] == b"setrange":
                self.hit(published(msg["channel"][cut:].decode()), time.perf_counter())

    def close(self) -> None:
        """Stop listening."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._ps.close()
        self._r.close()


class FloorPipe(Stamps):
    """The floor: a bare consumer that stamps arrival (the Kafka RTT) then does one Redis SET.

    The message value is the Redis key to write; the SET is seen by a KeyWatch like any grant.
    """

    def __init__(self, kafka: KafkaAccess, redis_url: str, topic: str) -> None:
        super().__init__()
        self._c = consumer(kafka)
        ends = end_offsets(self._c, topic)
        self._c.assign([TopicPartition(topic, p, o) for p, o in ends.items()])
        self._r = redis.Redis.from_url(redis_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-floor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._c.poll(0.05)
            if msg is None or msg.error():
                continue
            at = time.perf_counter()
            key = (msg.value() or b"").decode()
            self.hit(key, at)
            self._r.set(key, b"1", px=60_000)
        self._c.close()

    def close(self) -> None:
        """Stop consuming."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._r.close()


class ViewEvents(Stamps):
    """Stamps grant-view events: ``grant:<id>`` when issued, ``revoked:<agent>`` when revoked;
    keeps the offset the view has applied per partition and where each revocation sits."""

    def __init__(self) -> None:
        super().__init__()
        self.expiry: dict[str, float] = {}  # grant id -> expires_at (epoch s), as issued
        self.applied: dict[int, int] = {}  # partition -> last offset the view applied
        self.revocations: dict[str, tuple[int, int]] = {}  # agent -> (partition, offset)

    def applied_through(self, agent: str) -> bool:
        """True once the view has applied ``agent``'s revocation (its offset is behind the
        view's): every check that starts then must deny."""
        at = self.revocations.get(agent)
        return at is not None and self.applied.get(at[0], -1) >= at[1]

    def on_event(self, record: Record, _applied_at: float) -> None:
        """GrantView callback (runs in the view's thread right after it applied the event)."""
        at = time.perf_counter()
        ev = record.event
        if isinstance(ev, AgentRevoked):  # before the offset: applied_through never runs ahead
            self.revocations[ev.agent_id] = (record.partition, record.offset)
        self.applied[record.partition] = record.offset  # the index holds it already
        if isinstance(ev, GrantIssued):
            self.expiry[ev.grant_id] = ev.expires_at.timestamp()
            self.hit(f"grant:{ev.grant_id}", at)
        elif isinstance(ev, AgentRevoked):
            self.hit(f"revoked:{ev.agent_id}", at)
