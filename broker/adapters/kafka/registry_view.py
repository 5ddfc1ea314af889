"""The agent registry as the workers, the CLI and the SDKs read it. Imports follow, bus, schemas.

Kafka is the record (the compacted ``permbroker.agents`` topic); this is a view of it in memory:
the latest revision of every agent, and which agent owns each key id. Blocking calls (``sync``)
belong in a thread when the caller is async.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, read_all
from broker.adapters.kafka.follow import Follower
from schemas.events import AgentRecord
from schemas.topics import AGENTS


class Registry:
    """Latest record per agent and the kid index (thread-safe)."""

    def __init__(self) -> None:
        self._records: dict[str, AgentRecord] = {}
        self._kids: dict[str, str] = {}
        self._lock = threading.Lock()

    def apply(self, record: AgentRecord) -> bool:
        """Keep ``record`` if it is newer than what is held; True if it was."""
        with self._lock:
            current = self._records.get(record.agent_id)
            if current is not None and current.revision >= record.revision:
                return False
            self._records[record.agent_id] = record
            for key in record.keys:
                self._kids[key.kid] = record.agent_id
            return True

    def get(self, agent_id: str) -> AgentRecord | None:
        """The latest record of an agent, if registered."""
        with self._lock:
            return self._records.get(agent_id)

    def owner_of(self, kid: str) -> str | None:
        """The agent a key id was ever registered to."""
        with self._lock:
            return self._kids.get(kid)

    def records(self) -> list[AgentRecord]:
        """Every agent's latest record, by agent id."""
        with self._lock:
            return [self._records[a] for a in sorted(self._records)]


def fold(records: Iterable[Record]) -> Registry:
    """A registry from records read off the agents topic (undecodable ones are skipped)."""
    registry = Registry()
    for rec in records:
        if isinstance(rec.event, AgentRecord):
            registry.apply(rec.event)
    return registry


def read_registry(kafka: KafkaAccess, timeout: float = 30.0) -> Registry:
    """The whole registry, read once from the beginning (for the CLI and tests)."""
    return fold(read_all(kafka, AGENTS.name, timeout=timeout))


class RegistryView(Registry):
    """A registry kept current by following the agents topic in a thread."""

    def __init__(self, kafka: KafkaAccess) -> None:
        super().__init__()
        self._follower = Follower(kafka, AGENTS.name, self._on_record,
                                  name="permbroker-registry")

    def _on_record(self, rec: Record) -> None:
        if isinstance(rec.event, AgentRecord):
            self.apply(rec.event)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the records present at start are loaded."""
        return self._follower.wait_ready(timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until every record in the topic now is loaded (after a miss, or before a write)."""
        return self._follower.sync(timeout)

    def close(self) -> None:
        """Stop following."""
        self._follower.close()
