"""Reading the sealed audit topic (or a copy, or an export), its chain head, and exports.

Imports confluent-kafka, broker.adapters.kafka.bus, broker.audit.chain, broker.errors, schemas.

Blocking (confluent-kafka): run it from the CLI or a thread. The sealed topic is written in
Kafka transactions, so readers use ``read_committed`` and stop at each partition's end (EOF),
never at the high watermark, which a transaction marker may occupy.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, Message, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import consumer, partitions
from broker.adapters.kafka.edge import ROLE_BROKER, Trust
from broker.audit.chain import Position, is_digest, is_withheld, withheld
from broker.audit.verify import Entry
from broker.errors import BusError, WireError
from broker.identity.rules import Rejection
from schemas import topics
from schemas.events import AuditRecord


@dataclass(frozen=True)
class Stored:
    """One entry read back from the audit topic, with where it sits (and, read with a trust,
    why its broker signature does not verify)."""

    entry: Entry
    timestamp_ms: int
    refusal: str | None = None  # "<reason>: <detail>"; None when verified or not checked

    @property
    def withheld(self) -> bool:
        """An entry withheld from a partial export or a tenant's copy (its chain link only: no
        record to read)."""
        if self.entry.data is not None:
            return is_withheld(self.entry.data)
        value = self.entry.value or b""
        if b'"withheld":true' not in value:
            return False
        try:
            data = json.loads(value)
        except ValueError:
            return False
        return isinstance(data, dict) and is_withheld(data)

    def record(self) -> AuditRecord:
        """The entry as an AuditRecord (WireError when it is refused or does not parse)."""
        if self.refusal is not None:
            raise WireError(f"audit entry at partition {self.entry.partition} offset "
                            f"{self.entry.offset} is not signed by the broker: {self.refusal}")
        try:
            if self.entry.value is not None:
                return AuditRecord.model_validate_json(self.entry.value)
            return AuditRecord.model_validate(self.entry.data)
        except ValueError as exc:
            raise WireError(f"audit entry at partition {self.entry.partition} offset "
                            f"{self.entry.offset} does not parse: {exc}") from exc


def _start_offsets(c: Any, topic: str, since: datetime | None,
                   starts: dict[int, int] | None, user: str) -> list[TopicPartition]:
    if starts is not None:
        return [TopicPartition(topic, p, o) for p, o in starts.items()]
    parts = partitions(c, topic, user=user)
    if since is None:
        return [TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts]
    wanted = [TopicPartition(topic, p, int(since.timestamp() * 1000)) for p in parts]
    try:
        found = c.offsets_for_times(wanted, timeout=10)
    except KafkaException as exc:
        raise BusError(f"cannot look up offsets of {topic} by time: {exc}") from exc
    return [tp for tp in found if tp.offset >= 0]  # -1: nothing at or after `since`


def read_topic(
    kafka: KafkaAccess, topic: str = topics.AUDIT.name, *, since: datetime | None = None,
    starts: dict[int, int] | None = None, timeout: float = 60.0, trust: Trust | None = None,
) -> Iterator[Stored]:
    """Every committed entry of ``topic`` (from the first sealed at ``since``), to its end.

    ``starts`` (partition -> offset) reads only those partitions from those offsets. Entries of
    different partitions come interleaved, each partition's in offset order. With a ``trust``,
    each entry's broker signature is checked (``Stored.refusal`` says why one fails).
    """
    config: dict[str, object] = {"enable.partition.eof": True, "isolation.level": "read_committed"}
    c = consumer(kafka, group=None, **config)
    try:
        start = _start_offsets(c, topic, since, starts, kafka.username)
        todo = {tp.partition for tp in start}
        c.assign(start)
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise BusError(f"reading {topic} did not reach its end within {timeout:.0f}s")
            msg = c.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    todo.discard(msg.partition() or 0)
                    continue
                raise BusError(f"error reading {topic}: {err}")
            _kind, ts = msg.timestamp()
            yield Stored(Entry(msg.partition() or 0, msg.offset() or 0, msg.value()), ts,
                         _refusal(msg, trust))
    finally:
        c.close()


def _refusal(msg: Message, trust: Trust | None) -> str | None:
    """Why the entry's broker signature does not verify (None: it does, or nobody asked)."""
    if trust is None:
        return None
    items = msg.headers() or []
    headers = [(k, v.encode() if isinstance(v, str) else (v or b"")) for k, v in (
        items.items() if isinstance(items, dict) else items)]
    verdict = trust.verify(ROLE_BROKER, msg.key(), msg.value(), headers)
    return f"{verdict.code.value}: {verdict.detail}" if isinstance(verdict, Rejection) else None


def until(stored: Iterable[Stored], end: datetime | None) -> Iterator[Stored]:
    """Entries up to the first one (per partition) appended at or after ``end``: contiguous."""
    limit = int(end.timestamp() * 1000) if end is not None else None
    stopped: set[int] = set()
    for s in stored:
        if s.entry.partition in stopped:
            continue
        if limit is not None and s.timestamp_ms >= limit:
            stopped.add(s.entry.partition)
            continue
        yield s


def watermarks(kafka: KafkaAccess, topic: str) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) offsets."""
    c = consumer(kafka)
    try:
        out = {}
        for p in partitions(c, topic, user=kafka.username):
            try:
                out[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            except KafkaException as exc:
                raise BusError(f"cannot read offsets of {topic}: {exc}") from exc
        return out
    finally:
        c.close()


# --- export files ----------------------------------------------------------------------------

CSV_COLUMNS = ("partition", "offset", "seq", "occurred_at", "kind", "agent_id", "subject_id",
               "outcome", "rules", "reasons", "policy_revision", "hash", "prev_hash", "inputs")


def write_jsonl(stored: Iterable[Stored], out: IO[str],
                shown: Callable[[dict[str, Any]], bool] = lambda _: True) -> int:
    """One JSON object per line: {partition, offset, entry}; verifiable with --file. An entry
    ``shown`` refuses is written as its chain link only (``broker.audit.chain.withheld``)."""
    n = 0
    for s in stored:
        entry = json.loads(s.entry.value or b"null")
        if isinstance(entry, dict) and not shown(entry):
            entry = withheld(entry)
        out.write(json.dumps({"partition": s.entry.partition, "offset": s.entry.offset,
                              "entry": entry}, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_csv(stored: Iterable[Stored], out: IO[str]) -> int:
    """A flat table for a compliance review (inputs as a JSON column)."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    n = 0
    for s in stored:
        r = s.record()
        chain = r.chain
        writer.writerow([
            s.entry.partition, s.entry.offset, chain.seq if chain else "",
            r.occurred_at.isoformat(), r.kind, r.agent_id or "", r.subject_id, r.outcome,
            " ".join(r.rules), " | ".join(r.reasons), r.policy_revision,
            chain.hash if chain else "", chain.prev_hash if chain else "",
            json.dumps(r.inputs, sort_keys=True, ensure_ascii=False),
        ])
        n += 1
    return n


def read_jsonl(path: Path) -> Iterator[Stored]:
    """Entries of an export written by ``write_jsonl`` (WireError naming a bad line)."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                entry = Entry(int(row["partition"]), int(row["offset"]), data=row["entry"])
            except (ValueError, KeyError, TypeError) as exc:
                raise WireError(f"{path}:{number}: not an audit export line ({exc})") from exc
            if not isinstance(entry.data, dict):
                raise WireError(f"{path}:{number}: the entry is not a JSON object")
            yield Stored(entry, 0)


# --- the chain head, for the sealer -------------------------------------------------------


@dataclass
class Head:
    """A partition's chain head: where the next entry goes and what was sealed last."""

    pos: Position
    raw_offset: int = -1  # last raw offset sealed
    since: int = 0  # first seq after the last digest

    @property
    def pending(self) -> int:
        """Entries since the last digest."""
        return self.pos.seq - self.since


def read_head(kafka: KafkaAccess, partition: int, *, window: int = 64) -> Head:
    """The chain head of one sealed partition, read back from its last committed entries."""
    low, high = watermarks(kafka, topics.AUDIT.name)[partition]
    while True:
        start = max(low, high - window)
        head = _head_from(kafka, partition, start, complete=start <= low)
        if head is not None:
            return head
        window *= 4


def _head_from(kafka: KafkaAccess, partition: int, start: int, *, complete: bool) -> Head | None:
    """The head seen from ``start``; None if the window lacks the last record or digest."""
    last: dict[str, Any] | None = None
    raw_offset, since = -1, None
    for stored in read_topic(kafka, topics.AUDIT.name, starts={partition: start}):
        record = stored.record()
        if record.chain is None:
            raise BusError(f"entry at offset {stored.entry.offset} of {topics.AUDIT.name} has "
                           "no chain link: the head cannot be recovered (permbroker audit verify)")
        last = record.model_dump(mode="json")
        if is_digest(last):
            since = record.chain.seq + 1
        elif record.chain.raw_offset >= 0:
            raw_offset = record.chain.raw_offset
    if last is None:
        return Head(Position(partition)) if complete else None
    if not complete and (since is None or raw_offset < 0):
        return None
    pos = Position(partition, last["chain"]["seq"] + 1, last["chain"]["hash"])
    return Head(pos, raw_offset, since if since is not None else 0)
