"""The agent registry as the workers, the CLI and the SDKs read it. Imports follow, bus, schemas.

Kafka is the record (the compacted ``permbroker.agents`` topic); this is a view of it in memory:
the latest revision of every agent, and which agent owns each key id. Only records the broker
signed are applied (the decode edge checks them against the reader's trust): a forged record,
whatever its revision, is refused and counted and changes nothing. Blocking calls (``sync``)
belong in a thread when the caller is async.
"""

from __future__ import annotations

import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, read_all
from broker.adapters.kafka.edge import Trust
from broker.adapters.kafka.follow import Follower
from schemas.events import AgentRecord
from schemas.topics import AGENTS

PARSED = 4096  # records kept parsed, the most recently read (a worker's active agents)

# The field names and values every record repeats (schemas.events.AgentRecord): the preset
# dictionary records are deflated against. Held in memory only, so it may change freely.
_DICT = (
    b'"y":null,"kid":null,"alg":null,"use":null,"not_after":null,"revoked_at":null,'
    b'"change":"key-added","change":"suspended","reason":"","enrollment_id":"enr-",'
    b'"renewed_at":"T:.Z",{"agent_id":"","profile":{"agent_id":"","agent_class":"","owner":"",'
    b'"tenant":"default","model":{"name":"","version":"","digest":"sha256:"},'
    b'"training_data_ref":"","confidence_threshold":0.,"operational_params":{},"baseline":[],'
    b'"ceiling":[],"labels":{}},"status":"active","keys":[{"kid":"","jwk":{"kty":"OKP",'
    b'"crv":"Ed25519","x":"","y":null,"kid":"","alg":"EdDSA","use":"sig"},"status":"active",'
    b'"added_at":"T:.Z","not_after":null,"revoked_at":null}],"revision":1,'
    b'"change":"registered","reason":"","changed_at":"T:.Z","changed_by":"operator:",'
    b'"cause_id":"evt-","cause_offset":-1,"registered_at":"T:.Z","enrollment_id":null,'
    b'"renewed_at":null}'
)


def _pack(record: AgentRecord) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=_DICT)
    return deflate.compress(record.model_dump_json().encode()) + deflate.flush()


def _unpack(held: bytes) -> AgentRecord:
    inflate = zlib.decompressobj(-15, zdict=_DICT)
    return AgentRecord.model_validate_json(inflate.decompress(held) + inflate.flush())


class Registry:
    """Latest record per agent and the kid index (thread-safe).

    Held compact, so that a process holds a large registry in little memory: the ``parsed``
    records read or applied last stay parsed; a record leaving them is kept as its JSON deflated
    against a dictionary of what every record repeats (about 0.5 KB, against about 6 KB parsed).
    """

    def __init__(self, parsed: int = PARSED) -> None:
        # agent id -> (revision, packed record; None while it is among the parsed ones)
        self._held: dict[str, tuple[int, bytes | None]] = {}
        self._parsed: OrderedDict[str, AgentRecord] = OrderedDict()
        self._room = parsed
        self._kids: dict[str, str] = {}
        self._lock = threading.Lock()

    def apply(self, record: AgentRecord) -> bool:
        """Keep ``record`` if it is newer than what is held; True if it was."""
        with self._lock:
            current = self._held.get(record.agent_id)
            if current is not None and current[0] >= record.revision:
                return False
            self._held[record.agent_id] = (record.revision, None)
            self._keep_parsed(record)
            for key in record.keys:
                self._kids[key.kid] = record.agent_id
            return True

    def get(self, agent_id: str) -> AgentRecord | None:
        """The latest record of an agent, if registered."""
        with self._lock:
            record = self._parsed.get(agent_id)
            if record is not None:
                self._parsed.move_to_end(agent_id)
                return record
            held = self._held.get(agent_id)
            if held is None:
                return None
            assert held[1] is not None  # packed when it left the parsed ones
            record = _unpack(held[1])
            self._keep_parsed(record)
            return record

    def _keep_parsed(self, record: AgentRecord) -> None:
        """Hold ``record`` parsed; pack the one read longest ago when there is no room."""
        self._parsed[record.agent_id] = record
        self._parsed.move_to_end(record.agent_id)
        while len(self._parsed) > self._room:
            agent_id, old = self._parsed.popitem(last=False)
            self._held[agent_id] = (old.revision, _pack(old))

    def owner_of(self, kid: str) -> str | None:
        """The agent a key id was ever registered to."""
        with self._lock:
            return self._kids.get(kid)

    def count(self) -> int:
        """How many agents are registered."""
        with self._lock:
            return len(self._held)

    def agent_ids(self) -> list[str]:
        """Every registered agent's id, sorted."""
        with self._lock:
            return sorted(self._held)

    def records(self) -> list[AgentRecord]:
        """Every agent's latest record, by agent id (``records_of`` a batch at a time holds
        less)."""
        return self.records_of(self.agent_ids())

    def records_of(self, agent_ids: Iterable[str]) -> list[AgentRecord]:
        """The latest records of those of ``agent_ids`` that are registered, in that order;
        reading them keeps none parsed that was not (a pass over every agent evicts no one)."""
        with self._lock:
            held = [self._parsed.get(a) or got[1] for a in agent_ids
                    if (got := self._held.get(a)) is not None]
        return [r if isinstance(r, AgentRecord) else _unpack(r) for r in held if r is not None]


def fold(records: Iterable[Record]) -> Registry:
    """A registry from records read off the agents topic (refused ones were counted, skipped),
    every record kept parsed: a read once, to list or look up, packs none."""
    registry = Registry(parsed=sys.maxsize)
    for rec in records:
        if isinstance(rec.event, AgentRecord):
            registry.apply(rec.event)
    return registry


def read_registry(kafka: KafkaAccess, trust: Trust, timeout: float = 30.0) -> Registry:
    """The whole registry, read once from the beginning (for the CLI and tests)."""
    return fold(read_all(kafka, AGENTS.name, trust=trust, reader="registry-read",
                         timeout=timeout))


class RegistryView(Registry):
    """A registry kept current by following the agents topic in a thread."""

    def __init__(self, kafka: KafkaAccess, trust: Trust) -> None:
        super().__init__()
        self._follower = Follower(kafka, AGENTS.name, self._on_record, trust=trust,
                                  reader="registry", name="permbroker-registry")

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
