"""Resource-side grant view: follows the grant lifecycle topic, answers checks from memory.

Imports adapters and schemas. Expiry is judged at check time against the absolute ``expires_at``
(never extended on read). Until the view has read the topic up to the end it saw at start, it
denies everything (fail closed). A revoked grant id is remembered so it can never come back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from broker.adapters.bus import Record, consumer, end_offsets, to_record
from schemas import topics
from schemas.events import AgentRevoked, GrantExpired, GrantIssued, GrantReleased, GrantRevoked


@dataclass(frozen=True)
class Verdict:
    """A check's answer and why."""

    allowed: bool
    reason: str
    grant: GrantIssued | None = None


class GrantView:
    """An in-memory, Kafka-fed view of active grants for one resource service."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = topics.GRANTS.name,
        on_event: Callable[[Record, float], None] | None = None,
    ) -> None:
        self._consumer = consumer(bootstrap)
        self._topic = topic
        self._grants: dict[str, dict[str, GrantIssued]] = {}
        self._ended: set[str] = set()
        self._lock = threading.Lock()
        self._on_event = on_event
        ends = end_offsets(self._consumer, topic)
        self._pending = {p for p, end in ends.items() if end > 0}
        self._ends = ends
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        self._ready = threading.Event()
        if not self._pending:
            self._ready.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permbroker-view", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the view has caught up with the log as of its start."""
        return self._ready.wait(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            record = to_record(msg)
            self._apply(record)
            if self._on_event is not None:
                self._on_event(record, time.time())
            p = record.partition
            if p in self._pending and record.offset + 1 >= self._ends[p]:
                self._pending.discard(p)
                if not self._pending:
                    self._ready.set()
        self._consumer.close()

    def _apply(self, record: Record) -> None:
        ev = record.event
        with self._lock:
            if isinstance(ev, GrantIssued):
                if ev.grant_id not in self._ended:
                    self._grants.setdefault(ev.agent_id, {})[ev.grant_id] = ev
            elif isinstance(ev, GrantRevoked | GrantExpired | GrantReleased):
                self._end(ev.agent_id, (ev.grant_id,))
            elif isinstance(ev, AgentRevoked):
                self._end(ev.agent_id, tuple(self._grants.get(ev.agent_id, {})))
                self._ended.update(ev.grant_ids)

    def _end(self, agent_id: str, grant_ids: tuple[str, ...]) -> None:
        held = self._grants.get(agent_id, {})
        for gid in grant_ids:
            self._ended.add(gid)
            held.pop(gid, None)

    def allows(
        self, agent_id: str, scope: str, resource: str = "", now: datetime | None = None
    ) -> Verdict:
        """May ``agent_id`` use ``scope`` on ``resource`` right now? Denies with a reason."""
        if not self._ready.is_set():
            return Verdict(False, "grant view still catching up with the log (fail closed)")
        now = now or datetime.now(UTC)
        with self._lock:
            held = list(self._grants.get(agent_id, {}).values())
        expired = None
        for grant in held:
            if scope in grant.scopes and (not grant.resources or resource in grant.resources):
                if grant.expires_at > now:
                    left = (grant.expires_at - now).total_seconds()
                    return Verdict(
                        True,
                        f"grant {grant.grant_id} until "
                        f"{grant.expires_at.isoformat()} ({left:.1f}s left)",
                        grant,
                    )
                expired = grant
        if expired is not None:
            return Verdict(
                False, f"grant {expired.grant_id} expired at {expired.expires_at.isoformat()}"
            )
        return Verdict(False, f"no active grant of {scope} on {resource or '*'} for {agent_id}")

    def active(self, agent_id: str, now: datetime | None = None) -> list[GrantIssued]:
        """The agent's grants that have not ended or expired."""
        now = now or datetime.now(UTC)
        with self._lock:
            return [g for g in self._grants.get(agent_id, {}).values() if g.expires_at > now]

    def close(self) -> None:
        """Stop following the topic."""
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> GrantView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
