"""Poison records: the hostile shapes every reader of every topic must survive.

Imports broker (codec), schemas and tests.support.wire. Each poison is what a writer who got
past the ACLs could put on a topic: nothing here is signed (the attacker holds no key), so the
readers of signed topics must refuse each one before parsing it, and the worker must
dead-letter each one on its input topics. ``valid_for`` is a well-formed event of the topic in
an agent's name (what the poison imitates).
"""

from __future__ import annotations

from broker.adapters.kafka import codec
from schemas import topics
from schemas.events import (
    MODELS_BY_TYPE,
    AuditRecord,
    JwksPublished,
    RevocationAcknowledged,
    WireModel,
)
from tests.support.wire import SAMPLES

KINDS = ("nested-200kB", "key-newline", "invalid-utf8", "1MB", "tombstone", "unknown-major",
         "nan", "wrong-type")
SOURCE = "/tests/poison"


def valid_for(topic: str, agent: str) -> WireModel:
    """A well-formed event of ``topic`` (its first event type) about ``agent``."""
    model = MODELS_BY_TYPE[topics.by_name(topic).event_types[0]]
    sample = SAMPLES[model]
    if isinstance(sample, JwksPublished):
        return sample
    changes: dict[str, object] = {"agent_id": agent} if "agent_id" in model.model_fields else {}
    if "subject_agent_id" in model.model_fields:
        changes["subject_agent_id"] = agent
    if isinstance(sample, RevocationAcknowledged) or "enforcement_point" in model.model_fields:
        changes["enforcement_point"] = f"{agent}-point"
    return sample.model_copy(update=changes)


def _with(m: codec.Encoded, *, key: bytes | None = None, value: bytes | None = b"",
          ce_type: str | None = None) -> codec.Encoded:
    headers = [(k, ce_type.encode() if k == "ce_type" and ce_type else v) for k, v in m.headers]
    return codec.Encoded(key if key is not None else m.key,
                         m.value if value == b"" else value,  # type: ignore[arg-type]
                         headers)


def poison(kind: str, topic: str, agent: str) -> codec.Encoded:
    """One poison of ``kind`` for ``topic``, keyed by ``agent`` (or a key that almost is)."""
    good = codec.encode(valid_for(topic, agent), source=SOURCE)
    ce_type = dict(good.headers)["ce_type"].decode()
    if kind == "nested-200kB":
        return _with(good, value=b"[" * 200_000)
    if kind == "key-newline":
        return _with(good, key=(good.key or b"") + b"\n")
    if kind == "invalid-utf8":
        return _with(good, key=b"\xff\xfe" + agent.encode(), value=b'{"a": "\xff\xfe"}')
    if kind == "1MB":
        return _with(good, value=b'{"pad": "' + b"x" * (1_000_000 - 12) + b'"}')
    if kind == "tombstone":
        return codec.Encoded(good.key, None, good.headers)  # type: ignore[arg-type]
    if kind == "unknown-major":
        return _with(good, ce_type=ce_type.rsplit(".v", 1)[0] + ".v2")
    if kind == "nan":
        body = good.value.decode().rstrip("}") + ', "nan": NaN}'
        return _with(good, value=body.encode())
    if kind == "wrong-type":
        audit = SAMPLES[AuditRecord].model_copy(update={"agent_id": agent})
        return codec.encode(audit, source=SOURCE)
    raise ValueError(kind)


def poisons(topic: str, agent: str) -> list[tuple[str, codec.Encoded]]:
    """Every kind of poison for ``topic``, in ``KINDS`` order."""
    return [(kind, poison(kind, topic, agent)) for kind in KINDS]


def shown(m: codec.Encoded) -> str:
    """A short description of a poison (for assertion messages)."""
    size = len(m.value) if m.value is not None else "tombstone"
    return f"key={m.key[:40]!r} size={size} type={dict(m.headers).get('ce_type')!r}"
