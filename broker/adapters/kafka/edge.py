"""The one decode edge: every consumed Kafka message becomes a ``Record``, never an exception.

Imports confluent-kafka, codec, schemas, broker.identity.rules (Rejection) and prometheus-client.

``read`` checks, in order: size bounds (value, key, headers), a UTF-8 key, the signature where the
topic requires one (``signer_role``: what the broker writes is signed by the broker, what
enforcement points write by their own key) *before* any JSON is parsed, then the codec (JSON size,
depth and constants, CloudEvents headers, the event type, pydantic, the key matching the event),
the event type being one the topic carries, and for enforcement points that the signer is the
point the event names. A refused record carries a stable reason code and a sentence; whether its
signature verified (``authentic``) tells a view whether it may be a real event it cannot read
(fail closed for its agent) or a forgery (ignored, so it locks no one out).

Refusals are counted per consumer, topic and reason (``Refusals``, served as
``permbroker_records_refused_total``), logged with their origin (topic/partition/offset, rate
limited) and the latest are kept for readiness reports.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from confluent_kafka import Message
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from broker.adapters.kafka import codec
from broker.errors import WireError
from broker.identity.rules import Rejection
from schemas import topics
from schemas.events import (
    EVENT_TYPES,
    ChecksReported,
    EnforcementPointStatus,
    GrantUsed,
    RevocationAcknowledged,
    WireModel,
)
from schemas.signing import SERVICE_PREFIX

log = logging.getLogger("permbroker.edge")
ROLE_BROKER = "broker"  # signed by the broker's key (its chain of trust from the anchor)
ROLE_SERVICE = "service"  # signed by an enforcement point's key (the services file)
MAX_KEY_BYTES = 256
MAX_HEADERS = 32
MAX_HEADER_BYTES = 16 * 1024
_BROKER_TOPICS = frozenset(t.name for t in (topics.GRANTS, topics.DECISIONS, topics.AGENTS,
                                            topics.JWKS, topics.AUDIT))
_SERVICE_TOPICS = frozenset((topics.REVOCATION_ACKS.name, topics.USAGE.name))
Headers = tuple[tuple[str, bytes], ...]


def signer_role(topic: str) -> str | None:
    """Who must have signed a record of ``topic`` (None: its sender, checked by the gate)."""
    if topic in _BROKER_TOPICS or topic.startswith((topics.GRANT_TOPIC_PREFIX,
                                                    topics.TENANT_TOPIC_PREFIX)):
        return ROLE_BROKER
    return ROLE_SERVICE if topic in _SERVICE_TOPICS else None


@dataclass(frozen=True)
class Record:
    """One message read back: where it came from, and its event or why it was refused."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    event: WireModel | None
    error: str | None  # why it was refused (None when accepted)
    raw: bytes | None
    key: bytes | None = None
    headers: Headers = ()
    reason: str = ""  # the refusal's stable code ('' when accepted)
    signer: str = ""  # the verified signer (principal), when the topic requires one
    authentic: bool = False  # its signature verified, even if the event could not be read
    kid: str = ""  # the key that signature verified with

    @property
    def origin(self) -> str:
        """topic/partition/offset."""
        return f"{self.topic}/{self.partition}/{self.offset}"


@dataclass(frozen=True)
class Signed:
    """A verified signature: who signed (principal), with which key, when (``iat``)."""

    principal: str
    kid: str
    iat: int


class Trust(Protocol):
    """Verifies the signature of a record (``broker.adapters.crypto.trust.RecordTrust``)."""

    @property
    def refusals(self) -> Refusals:
        """Where this process counts what its readers refused."""

    def verify(self, role: str, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]]) -> Signed | Rejection:
        """The signer if the record is signed as ``role`` requires; else why not."""


def read(topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
         value: bytes | None, headers: Sequence[tuple[str, bytes | str | None]], *,
         trust: Trust | None, reader: str = "",
         expect: type[WireModel] | tuple[type[WireModel], ...] | None = None,
         signed_by: str | None = None) -> Record:
    """The record's event if it passes every check, else why not (counted for ``reader``).

    ``trust`` None reads without checking signatures (test taps, dead-letter inspection only).
    ``signed_by`` requires that signer whatever the topic's name (a grant view on a topic of
    its own choosing still takes only what the broker signed).
    """
    items = tuple((str(k), v.encode() if isinstance(v, str) else (v or b"")) for k, v in headers)
    base = Record(topic, partition, offset, timestamp_ms, None, None, value, key, items)
    try:
        record = _read(base, trust, expect, signed_by or signer_role(topic))
    except Exception as exc:  # noqa: BLE001 - the decode edge: nothing a record holds escapes it
        record = _refused(base, "internal", f"{type(exc).__name__}: {str(exc)[:200]}")
    if record.event is None and trust is not None and reader:
        trust.refusals.add(reader, record)
    return record


def read_message(msg: Message, *, trust: Trust | None, reader: str = "",
                 expect: type[WireModel] | tuple[type[WireModel], ...] | None = None,
                 signed_by: str | None = None) -> Record:
    """``read`` for a message consumed with confluent-kafka."""
    raw_headers = msg.headers() or []
    items = raw_headers.items() if isinstance(raw_headers, dict) else raw_headers
    key = msg.key()
    _kind, ts = msg.timestamp()
    return read(msg.topic() or "", msg.partition() or 0, msg.offset() or 0, ts,
                key.encode() if isinstance(key, str) else key, msg.value(), list(items),
                trust=trust, reader=reader, expect=expect, signed_by=signed_by)


def _refused(base: Record, reason: str, detail: str, signed: Signed | None = None) -> Record:
    return Record(base.topic, base.partition, base.offset, base.timestamp_ms, None, detail,
                  base.raw, base.key, base.headers, reason, signed.principal if signed else "",
                  signed is not None, signed.kid if signed else "")


def _bounds(rec: Record) -> tuple[str, str] | None:
    """Sizes and encodings no event of ours exceeds, checked before anything is parsed."""
    if rec.raw is not None and len(rec.raw) > codec.MAX_VALUE_BYTES:
        return "too-large", f"value of {len(rec.raw)} bytes exceeds {codec.MAX_VALUE_BYTES}"
    if rec.key is not None and len(rec.key) > MAX_KEY_BYTES:
        return "too-large", f"key of {len(rec.key)} bytes exceeds {MAX_KEY_BYTES}"
    if len(rec.headers) > MAX_HEADERS or sum(
            len(k) + len(v) for k, v in rec.headers) > MAX_HEADER_BYTES:
        return "bad-headers", f"more than {MAX_HEADERS} headers or {MAX_HEADER_BYTES} bytes"
    try:
        if rec.key is not None:
            rec.key.decode("utf-8")
    except UnicodeDecodeError:
        return "bad-key", "the message key is not UTF-8"
    return None


def _read(base: Record, trust: Trust | None,
          expect: type[WireModel] | tuple[type[WireModel], ...] | None,
          role: str | None) -> Record:
    bad = _bounds(base)
    if bad is not None:
        return _refused(base, *bad)
    signed: Signed | None = None
    if role is not None and trust is not None:
        verdict = trust.verify(role, base.key, base.raw, base.headers)
        if isinstance(verdict, Rejection):
            return _refused(base, verdict.code.value, verdict.detail)
        signed = verdict
    try:
        event = codec.decode(base.key, base.raw, base.headers)
    except WireError as exc:
        return _refused(base, exc.code, str(exc), signed)
    problem = _misplaced(base.topic, event, expect) or _not_author(role, signed, event)
    if problem is not None:
        return _refused(base, *problem, signed)
    return Record(base.topic, base.partition, base.offset, base.timestamp_ms, event, None,
                  base.raw, base.key, base.headers, "", signed.principal if signed else "",
                  signed is not None, signed.kid if signed else "")


def _misplaced(topic: str, event: WireModel,
               expect: type[WireModel] | tuple[type[WireModel], ...] | None
               ) -> tuple[str, str] | None:
    """An event of a type its topic does not carry, or not what this reader expects."""
    ce_type = EVENT_TYPES[type(event)]
    try:
        carried = topics.by_name(topic).event_types
    except KeyError:
        carried = ()
    if carried and ce_type not in carried:
        return "wrong-topic", f"{ce_type} does not belong on {topic}"
    if expect is not None and not isinstance(event, expect):
        return "wrong-type", f"{type(event).__name__} is not what this reader of {topic} expects"
    return None


def _not_author(role: str | None, signed: Signed | None,
                event: WireModel) -> tuple[str, str] | None:
    """An enforcement point speaks only for itself."""
    if role != ROLE_SERVICE or signed is None:
        return None
    if isinstance(event, RevocationAcknowledged | EnforcementPointStatus):
        named = event.enforcement_point
    elif isinstance(event, GrantUsed | ChecksReported):
        named = event.service
    else:
        return "wrong-topic", f"{type(event).__name__} is not an enforcement point's report"
    if SERVICE_PREFIX + named != signed.principal:
        return "not-permitted", f"signed by {signed.principal}, in the name of {named}"
    return None


# --- refusals -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """One record a reader refused, where it was and why."""

    consumer: str
    topic: str
    origin: str
    reason: str
    detail: str
    key: str
    at: datetime

    def as_dict(self) -> dict[str, str]:
        """JSON-ready form (readiness details, status commands)."""
        return {"consumer": self.consumer, "origin": self.origin, "reason": self.reason,
                "detail": self.detail, "key": self.key, "at": self.at.isoformat()}


class Refusals:
    """Refused records of one process: counts by (consumer, topic, reason), the latest few."""

    def __init__(self, keep: int = 50, log_every_s: float = 1.0) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._recent: deque[Refusal] = deque(maxlen=keep)
        self._log_every = log_every_s
        self._logged: dict[tuple[str, str, str], tuple[float, int]] = {}

    def add(self, consumer: str, record: Record) -> None:
        """Count one refused record and log it (at most once a second per kind, with a tally)."""
        kind = (consumer, record.topic, record.reason or "refused")
        shown = (record.key or b"")[:80].decode(errors="replace")
        refusal = Refusal(consumer, record.topic, record.origin, kind[2],
                          (record.error or "")[:300], shown, datetime.now(UTC))
        now = time.monotonic()
        with self._lock:
            self._counts[kind] = self._counts.get(kind, 0) + 1
            self._recent.append(refusal)
            last, quiet = self._logged.get(kind, (0.0, 0))
            if now - last < self._log_every:
                self._logged[kind] = (last, quiet + 1)
                return
            self._logged[kind] = (now, 0)
        more = f" (+{quiet} more of this kind)" if quiet else ""
        log.warning("%s refused %s (key %r): %s: %s%s", consumer, record.origin, shown,
                    kind[2], refusal.detail, more)

    def counts(self) -> dict[tuple[str, str, str], int]:
        """(consumer, topic, reason) -> how many records were refused."""
        with self._lock:
            return dict(self._counts)

    def total(self, consumer: str | None = None, topic: str | None = None) -> int:
        """How many records were refused (by one consumer, on one topic)."""
        return sum(n for (c, t, _r), n in self.counts().items()
                   if consumer in (None, c) and topic in (None, t))

    def recent(self) -> list[Refusal]:
        """The latest refusals, oldest first."""
        with self._lock:
            return list(self._recent)


class RefusalCollector(Collector):
    """``permbroker_records_refused_total{consumer,topic,reason}``, read at scrape time."""

    def __init__(self, refusals: Refusals) -> None:
        self._refusals = refusals

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "permbroker_records_refused", "Records a reader refused (unsigned, forged, "
            "unreadable...), by reader, topic and reason", labels=["consumer", "topic", "reason"])
        for (consumer, topic, reason), n in sorted(self._refusals.counts().items()):
            family.add_metric([consumer, topic, reason], n)
        yield family
