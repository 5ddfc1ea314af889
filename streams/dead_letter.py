"""Dead letters that always fit on Kafka, and their audit records. Imports broker, schemas.

A hostile message can be as large as the input topic allows (about 1 MiB) and carry large
headers or a large key; copying it verbatim plus our headers could exceed what the producer may
send, and a dead letter that can never be written would halt its partition. So the copy keeps
at most ``MAX_VALUE_BYTES`` of the value, ``MAX_HEADER_BYTES`` of original headers and
``MAX_KEY_BYTES`` of key, and says what it cut (``dlq_truncated``, ``dlq_original_size``,
``dlq_sha256`` of the whole value). Every dead letter is also audited.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from broker.adapters.kafka import codec
from broker.grants.decide import derive_id
from schemas import topics
from schemas.events import AGENT_ID_PATTERN, AuditRecord

MAX_VALUE_BYTES = codec.MAX_VALUE_BYTES
MAX_HEADER_BYTES = 16 * 1024
MAX_KEY_BYTES = 1024
MAX_REASON_CHARS = 1000
_SHOWN = 200


def clip(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more chars)"


def dead_letter_message(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    origin: tuple[str, int, int],
    reason: str,
) -> codec.Encoded:
    """The DLQ copy of one message: raw bytes (bounded), origin and reason in headers."""
    raw = value or b""
    topic, partition, offset = origin
    kept = []
    size = 0
    for name, data in headers:
        size += len(name) + len(data or b"")
        if size > MAX_HEADER_BYTES:
            break
        kept.append((name, data or b""))
    extra = [
        (topics.DLQ_REASON, clip(reason).encode()),
        (topics.DLQ_TOPIC, topic.encode()),
        (topics.DLQ_PARTITION, str(partition).encode()),
        (topics.DLQ_OFFSET, str(offset).encode()),
    ]
    if len(raw) > MAX_VALUE_BYTES or len(kept) < len(headers):
        extra += [
            ("dlq_truncated", b"1"),
            ("dlq_original_size", str(len(raw)).encode()),
            ("dlq_sha256", hashlib.sha256(raw).hexdigest().encode()),
        ]
    return codec.Encoded(
        key=key[:MAX_KEY_BYTES] if key is not None else None,
        value=raw[:MAX_VALUE_BYTES],
        headers=kept + extra,
    )


def _shown(data: bytes | None) -> str | None:
    if data is None:
        return None
    text = data[:_SHOWN].decode(errors="replace")
    return text if len(data) <= _SHOWN else f"{text}... ({len(data)} bytes)"


def dead_letter_audit(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    origin: tuple[str, int, int],
    reason: str,
    at: datetime,
) -> AuditRecord:
    """The audit record of a rejected message: who its key names, where it was, and why."""
    topic, partition, offset = origin
    where = f"{topic}/{partition}/{offset}"
    text = (key or b"").decode(errors="replace")
    agent = text if key is not None and re.fullmatch(AGENT_ID_PATTERN, text) else None
    header = dict(headers)
    return AuditRecord(
        audit_id=derive_id("audit-dead-letter", where),
        kind="message.dead_lettered",
        agent_id=agent,
        occurred_at=at,
        subject_id=where,
        outcome="rejected",
        reasons=(clip(reason),),
        inputs={
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "size": len(value or b""),
            "key": _shown(key),
            "ce_type": _shown(header.get("ce_type")),
            "ce_id": _shown(header.get("ce_id")),
            "sha256": hashlib.sha256(value or b"").hexdigest(),
        },
    )
