"""The audit sealer: chains raw audit records into the sealed audit topic, with signed digests.

Imports confluent-kafka, broker.audit.chain, broker.adapters (audit_keys, audit_log, codec,
edge), broker.config, broker.errors, schemas. Every sealed entry carries the broker's record
signature (``sign``), like everything else the broker writes. Blocking: it runs in a thread of
the worker (or alone, ``permbroker audit seal``), never inside a faust agent.

Workers append audit records to ``permbroker.audit.raw`` (acknowledged before any grant they
describe becomes visible). The sealer consumes that topic in its own consumer group, so each raw
partition has one sealer at a time, and copies every record into the same partition of
``permbroker.audit`` with its chain link (seq, prev_hash, hash, raw_offset), plus a signed
digest every ``audit_digest_interval_s`` (or ``audit_digest_every`` entries).

Each tenant declared in ``PERMBROKER_TENANT_POLICIES_DIR`` has a copy of the chain that its
operators read (``permbroker.tenant.<tenant>.audit``, same partitions): in the same transaction,
every entry about one of its agents and every digest as sealed, every other entry as its chain
link only (``AuditWithheld``), so the copy verifies like an export cut.

Exactly once, without trusting consumer offsets: each partition has its own transactional
producer (``transactional.id`` = ``<app_id>-audit-sealer-p<N>``), so a new owner fences a zombie
and aborts its open transaction; the new owner then reads the chain head (last seq, hash and raw
offset) back from the sealed topic and resumes at the next raw offset. A raw range that
retention removed before it was sealed is recorded as an ``audit.gap`` entry, never skipped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from broker.adapters.audit.keys import AuditKeys
from broker.adapters.audit.log import Head, read_head, watermarks
from broker.adapters.kafka import codec
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import consumer, partitions
from broker.adapters.kafka.clientlog import routed
from broker.adapters.kafka.edge import read_message
from broker.audit.chain import (
    DIGEST_KIND,
    GENESIS,
    Position,
    canonical,
    seal_digest,
    seal_record,
    withheld,
)
from broker.config import Settings
from broker.errors import BusError, Fenced
from broker.identity.tenants import SEPARATOR, declared
from schemas import topics
from schemas.events import AuditRecord, AuditWithheld

log = logging.getLogger("permbroker.sealer")
SOURCE = "/permbroker/sealer"
BATCH = 500


def _encode(record: AuditRecord, value: bytes, pos: Position) -> codec.Encoded:
    """The sealed entry as a CloudEvent: canonical bytes, ce_id naming its chain position."""
    encoded = codec.encode(record, source=SOURCE)
    ce_id = f"audit:{pos.partition}:{pos.seq}".encode()
    headers = [(k, ce_id if k == "ce_id" else v) for k, v in encoded.headers]
    return codec.Encoded(key=encoded.key, value=value, headers=headers)


def _undecodable(msg: Message, error: str, now: datetime) -> AuditRecord:
    """What the chain holds for a raw message that is not an unsealed AuditRecord."""
    raw = msg.value() or b""
    where = f"{topics.AUDIT_RAW.name}/{msg.partition()}/{msg.offset()}"
    return AuditRecord(
        audit_id=f"undecodable-{msg.partition()}-{msg.offset()}", kind="audit.undecodable",
        agent_id=None, occurred_at=now, subject_id=where, outcome="undecodable",
        reasons=(f"raw audit message at {where} could not be sealed as written: {error}",),
        inputs={"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)},
    )


def _gap(partition: int, first: int, last: int, now: datetime) -> AuditRecord:
    return AuditRecord(
        audit_id=f"gap-{partition}-{first}-{last}", kind="audit.gap", agent_id=None,
        occurred_at=now, subject_id=f"{topics.AUDIT_RAW.name}/{partition}/{first}-{last}",
        outcome="lost",
        reasons=(f"raw audit offsets {first}..{last} of partition {partition} were removed "
                 "(retention) before they were sealed",),
    )


def _after(pos: Position, sealed: AuditRecord) -> Position:
    """The position following a sealed entry."""
    return Position(pos.partition, pos.seq + 1, sealed.chain.hash if sealed.chain else GENESIS)


Sign = Callable[[codec.Encoded], codec.Encoded]


def _withheld(sealed: AuditRecord) -> codec.Encoded:
    """A tenant copy's stand-in for an entry about someone else: its chain link only (as an
    export withholds it), no key (the key is the agent id)."""
    link = withheld(sealed.model_dump(mode="json"))
    encoded = codec.encode(AuditWithheld.model_validate(link), source=SOURCE)
    return codec.Encoded(key=None, value=canonical(link), headers=encoded.headers)


def tenant_entries(copies: dict[str, str], sealed: list[AuditRecord],
                   signed: list[codec.Encoded], sign: Sign) -> list[tuple[str, codec.Encoded]]:
    """What each tenant's copy (tenant -> topic) gets of these sealed entries (``signed``: as
    written to the audit): its agents' entries and the digests as they are, every other entry
    as its chain link (``AuditWithheld``, signed)."""
    out = []
    for tenant, topic in copies.items():
        prefix = tenant + SEPARATOR
        for entry, message in zip(sealed, signed, strict=True):
            own = entry.kind == DIGEST_KIND or (entry.agent_id or "").startswith(prefix)
            out.append((topic, message if own else sign(_withheld(entry))))
    return out


def tenant_copies(kafka: KafkaAccess, tenants: tuple[str, ...]) -> dict[str, str]:
    """tenant -> its audit copy topic, for the ``tenants`` whose copy exists (the others are
    logged: what is sealed while their topic is missing is not in their copy)."""
    if not tenants:
        return {}
    c = consumer(kafka)
    try:
        meta = c.list_topics(timeout=10)
    except KafkaException as exc:
        raise BusError(f"cannot list the tenants' audit topics: {exc}") from exc
    finally:
        c.close()
    out = {}
    for tenant in tenants:
        name = topics.tenant_audit(tenant).name
        info = meta.topics.get(name)
        if info is None or info.error is not None:
            log.warning("tenant %s has no audit copy yet (%s: permbroker stack up or kafka "
                        "provision creates it); its copy starts when a sealer opens after that",
                        tenant, name)
        else:
            out[tenant] = name
    return out


class PartitionSealer:
    """Seals one partition: its transactional producer and its chain head."""

    def __init__(self, settings: Settings, kafka: KafkaAccess, partition: int,
                 keys: AuditKeys, sign: Sign, tenants: tuple[str, ...] = ()) -> None:
        self.partition = partition
        self._tenants = tenants  # declared: each has a copy of the chain (``tenant_copies``)
        self._copies: dict[str, str] = {}
        self._settings = settings
        self._kafka = kafka
        self._keys = keys
        self._sign = sign
        self._producer = Producer(routed({
            **kafka.confluent(),
            "transactional.id": f"{settings.app_id}-audit-sealer-p{partition}",
            "enable.idempotence": True, "acks": "all", "linger.ms": 2,
            "transaction.timeout.ms": 60000,
        }))
        self.head = Head(Position(partition))
        self._last_digest = time.monotonic()

    def open(self, timeout: float = 30.0) -> int:
        """Fence any previous owner, read the head back; returns the next raw offset to seal."""
        try:
            self._producer.init_transactions(timeout)
        except KafkaException as exc:
            raise BusError(f"sealer of partition {self.partition} could not start its "
                           f"transactions: {exc}") from exc
        self.head = read_head(self._kafka, self.partition)
        self._copies = tenant_copies(self._kafka, self._tenants)
        low, _high = watermarks(self._kafka, topics.AUDIT_RAW.name)[self.partition]
        if low > self.head.raw_offset + 1:
            now = datetime.now(UTC)
            self._commit([(_gap(self.partition, self.head.raw_offset + 1, low - 1, now), -1)],
                         raw_offset=low - 1)
        log.info("sealing partition %d from raw offset %d (chain at seq %d)", self.partition,
                 self.head.raw_offset + 1, self.head.pos.seq)
        return self.head.raw_offset + 1

    @property
    def next_raw(self) -> int:
        """The raw offset to seal next."""
        return self.head.raw_offset + 1

    def seal(self, messages: list[Message]) -> int:
        """Seal consecutive raw messages (older ones are skipped); returns how many."""
        now = datetime.now(UTC)
        batch: list[tuple[AuditRecord, int]] = []
        expected = self.next_raw
        for msg in messages:
            offset = msg.offset() or 0
            if offset < expected:
                continue  # sealed already (a redelivery after a seek)
            if offset > expected:
                raise BusError(f"raw offset {offset} arrived before {expected}")
            batch.append((self._record(msg, now), offset))
            expected += 1
        if batch:
            self._commit(batch, raw_offset=expected - 1)
        return len(batch)

    def _record(self, msg: Message, now: datetime) -> AuditRecord:
        read = read_message(msg, trust=None)  # the decode edge: never raises
        event = read.event
        if event is None:
            return _undecodable(msg, read.error or "refused", now)
        if not isinstance(event, AuditRecord) or event.chain is not None:
            return _undecodable(msg, f"a {type(event).__name__} with a chain link", now)
        return event

    def digest_due(self) -> bool:
        """True when entries await a digest and enough time or entries have passed."""
        return self._due(self.head.pending)

    def _due(self, pending: int) -> bool:
        """The digest rule: entries await one, and enough entries or enough time have passed."""
        elapsed = time.monotonic() - self._last_digest
        return pending > 0 and (pending >= self._settings.audit_digest_every
                                or elapsed >= self._settings.audit_digest_interval_s)

    def digest(self) -> None:
        """Append a signed digest sealing every entry so far."""
        self._commit([], raw_offset=self.head.raw_offset, force_digest=True)

    def _commit(self, batch: list[tuple[AuditRecord, int]], *, raw_offset: int,
                force_digest: bool = False) -> None:
        """One transaction: the batch, then a digest if due; the head moves only on commit."""
        now = datetime.now(UTC)
        pos, since = self.head.pos, self.head.since
        sealed: list[tuple[AuditRecord, codec.Encoded]] = []
        for record, raw in batch:
            entry, value = seal_record(record, pos, raw, now)
            sealed.append((entry, _encode(entry, value, pos)))
            pos = _after(pos, entry)
        # A digest due rides in the batch's transaction rather than a second one.
        digested = force_digest or self._due(pos.seq - since)
        if digested:
            digest, value = seal_digest(pos, first_seq=since, signed_at=now,
                                        key_id=self._keys.key_id, sign=self._keys.sign)
            sealed.append((digest, _encode(digest, value, pos)))
            pos = _after(pos, digest)
        # Signed before the transaction opens: a signing failure leaves none open.
        entries = [(topics.AUDIT.name, self._sign(m)) for _, m in sealed]
        entries += tenant_entries(self._copies, [e for e, _ in sealed],
                                  [m for _, m in entries], self._sign)
        try:
            self._producer.begin_transaction()
            for topic, message in entries:
                self._produce(topic, message)
            self._producer.commit_transaction(30.0)
        except KafkaException as exc:
            self._abort(exc)
        if digested:
            since, self._last_digest = pos.seq, time.monotonic()
        self.head = Head(pos, raw_offset, since)

    def _produce(self, topic: str, m: codec.Encoded) -> None:
        headers: list[tuple[str, str | bytes | None]] = list(m.headers)
        self._producer.produce(topic, value=m.value, key=m.key, headers=headers,
                               partition=self.partition)

    def _abort(self, exc: KafkaException) -> None:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.fatal():
            raise Fenced(f"sealer of partition {self.partition} was fenced: {err}") from exc
        try:
            self._producer.abort_transaction(30.0)
        except KafkaException as abort_exc:
            raise Fenced(f"sealer of partition {self.partition} cannot abort: {abort_exc}"
                         ) from abort_exc
        raise BusError(f"sealing partition {self.partition} was aborted: {exc}") from exc

    def close(self) -> None:
        """Drop the producer (nothing is left open between transactions)."""
        self._producer.flush(5.0)


class Sealer:
    """Consumes the raw audit topic in a group and seals the partitions it is assigned."""

    def __init__(self, settings: Settings, kafka: KafkaAccess, keys: AuditKeys,
                 sign: Sign) -> None:
        self._settings = settings
        self._kafka = kafka
        self._keys = keys
        self._sign = sign  # the broker's record signature on every sealed entry
        self._sealers: dict[int, PartitionSealer] = {}
        self._stop = threading.Event()
        self.sealed = 0

    def positions(self) -> dict[int, int]:
        """partition -> the raw offset to seal next, for each partition sealed here now."""
        return {p: s.next_raw for p, s in list(self._sealers.items())}

    def stop(self) -> None:
        """Ask ``run`` to return after its current step."""
        self._stop.set()

    def run(self) -> None:
        """Seal until ``stop()``; Kafka errors are retried, the partition's chain waits."""
        c = consumer(self._kafka, group=f"{self._settings.app_id}-audit-sealer",
                     **{"enable.auto.commit": False,
                        "session.timeout.ms": int(self._settings.session_timeout_s * 1000),
                        "heartbeat.interval.ms": int(self._settings.session_timeout_s * 250)})
        try:
            partitions(c, topics.AUDIT_RAW.name)  # fail fast and clearly if the topic is absent
            c.subscribe([topics.AUDIT_RAW.name], on_assign=self._assigned,
                        on_revoke=self._revoked, on_lost=self._revoked)
            while not self._stop.is_set():
                # consume() returns once BATCH records came or the wait is over: at a low rate
                # each wait seals what came as one transaction per partition, so a longer wait
                # means fewer transactions (each costs Kafka several requests and log appends).
                self._step(c, c.consume(BATCH, self._settings.audit_seal_wait_s))
        finally:
            for sealer in self._sealers.values():
                sealer.close()
            self._sealers.clear()
            c.close()

    def _assigned(self, c: Consumer, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            sealer = PartitionSealer(self._settings, self._kafka, tp.partition, self._keys,
                                     self._sign, declared(self._settings.tenant_policies_dir))
            tp.offset = _retry(sealer.open, self._stop, f"open partition {tp.partition}")
            self._sealers[tp.partition] = sealer
        c.assign(assigned)

    def _revoked(self, c: Consumer, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            sealer = self._sealers.pop(tp.partition, None)
            if sealer is not None:
                sealer.close()
        c.unassign()

    def _step(self, c: Consumer, messages: list[Message]) -> None:
        batches: dict[int, list[Message]] = {}
        for msg in messages:
            err = msg.error()
            if err is None:
                batches.setdefault(msg.partition() or 0, []).append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("reading %s: %s", topics.AUDIT_RAW.name, err)
        for partition, batch in batches.items():
            self._seal(c, partition, partial(PartitionSealer.seal, messages=batch))
        for partition, sealer in list(self._sealers.items()):
            if sealer.digest_due():
                self._seal(c, partition, lambda s: s.digest())

    def _seal(self, c: Consumer, partition: int, work: Callable[[PartitionSealer], Any]) -> None:
        sealer = self._sealers.get(partition)
        if sealer is None:
            return
        try:
            self.sealed += work(sealer) or 0
        except Fenced as exc:
            log.error("%s; leaving the partition to its new owner", exc)
            self._sealers.pop(partition, None)
            c.pause([TopicPartition(topics.AUDIT_RAW.name, partition)])
        except (BusError, KafkaException) as exc:
            log.warning("sealing partition %d will be retried: %s", partition, exc)
            c.seek(TopicPartition(topics.AUDIT_RAW.name, partition, sealer.next_raw))
            self._stop.wait(0.5)


def _retry(call: Callable[[], int], stop: threading.Event, what: str) -> int:
    """Retry a blocking step with backoff until it works (or the sealer stops)."""
    delay = 0.2
    while True:
        try:
            return call()
        except (BusError, KafkaException) as exc:
            if stop.is_set():
                raise
            log.warning("%s failed, retrying in %.1fs: %s", what, delay, exc)
            stop.wait(delay)
            delay = min(delay * 2, 5.0)
