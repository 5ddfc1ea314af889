"""CloudEvents 1.0 binary-mode codec between Kafka messages and wire models.

Imports schemas, cloudevents, broker.adapters.tracing.

On Kafka an event is: key = agent id, headers = ``ce_*`` attributes (+ ``content-type``),
value = the model as JSON. Decoding checks every layer and raises ``WireError`` (and nothing
else, whatever the bytes hold) with a reason that the dead-letter topic carries verbatim: the
size, nesting depth and constants (no NaN or Infinity) of the JSON are bounded before it is
parsed, so no record can exhaust the stack or smuggle a non-number into a float field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from broker.adapters import tracing
from broker.errors import WireError
from schemas.events import (
    EVENT_TYPES,
    KNOWN_MINOR,
    WireModel,
    model_for_type,
    partition_key,
    type_version,
)

CONTENT_TYPE = "application/json"
MAX_VALUE_BYTES = 256 * 1024
MAX_JSON_DEPTH = 32  # our deepest event nests 5 levels; a decoder's stack is never at risk
REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_type", "ce_source")
_FORMAT = JSONFormat()
_STRINGS = re.compile(rb'"(?:[^"\\]++|\\.)*+"')  # JSON strings (brackets inside do not nest)
_BRACKETS = re.compile(rb"[\[\]{}]")

Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None


@dataclass(frozen=True)
class Encoded:
    """A Kafka message ready to produce."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def encode(event: WireModel, *, source: str, time: datetime | None = None) -> Encoded:
    """Encode a model as a binary-mode CloudEvent; the CE id is the event's idempotency id.

    When tracing is on, the current span's context rides along as ``ce_traceparent``."""
    key = partition_key(event)
    attributes: dict[str, Any] = {
        "type": EVENT_TYPES[type(event)],
        "source": source,
        "id": event.event_id,
        "time": time or datetime.now(UTC),
        "datacontenttype": CONTENT_TYPE,
    }
    if key is not None:
        attributes["subject"] = key
    message = ce_kafka.to_binary(CloudEvent(attributes, event.model_dump_json().encode()), _FORMAT)
    return Encoded(
        key=key.encode() if key is not None else None,
        value=message.value,
        headers=list(message.headers.items()) + tracing.inject(),
    )


def _header_dict(headers: Headers) -> dict[str, bytes]:
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name: value for name, value in items if value is not None}


def json_depth(value: bytes, limit: int = MAX_JSON_DEPTH) -> int:
    """How deep the JSON in ``value`` nests, counting no further than ``limit + 1``."""
    depth = deepest = 0
    for bracket in _BRACKETS.finditer(_STRINGS.sub(b'""', value)):
        if bracket.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                break
        else:
            depth -= 1
    return deepest


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def check_json(value: bytes | None) -> None:
    """Refuse what no event can be: a tombstone, too many bytes, too deep, not JSON, NaN."""
    if value is None:
        raise WireError("empty value (tombstone) where an event was expected", code="tombstone")
    if len(value) > MAX_VALUE_BYTES:
        raise WireError(f"value of {len(value)} bytes exceeds the {MAX_VALUE_BYTES}-byte limit",
                        code="too-large")
    if json_depth(value) > MAX_JSON_DEPTH:
        raise WireError(f"value nests deeper than {MAX_JSON_DEPTH} levels", code="too-deep")
    try:
        json.loads(value, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise WireError(f"value is not valid JSON: {exc}", code="not-json") from exc
    except RecursionError as exc:  # unreachable below the depth limit; kept as a backstop
        raise WireError("value nests too deep to parse", code="too-deep") from exc


def decode(key: bytes | None, value: bytes | None, headers: Headers) -> WireModel:
    """Decode and validate one Kafka message; raise WireError saying exactly what is wrong."""
    try:
        return _decode(key, value, headers)
    except WireError:
        raise
    except Exception as exc:  # the decode edge: whatever the bytes do, they get a reason
        raise WireError(f"cannot decode: {type(exc).__name__}: {str(exc)[:200]}") from exc


def _decode(key: bytes | None, value: bytes | None, headers: Headers) -> WireModel:
    check_json(value)
    assert value is not None
    header_map = _header_dict(headers)
    missing = [h for h in REQUIRED_HEADERS if h not in {k.lower() for k in header_map}]
    if missing:
        raise WireError(f"not a binary-mode CloudEvent: missing header(s) {', '.join(missing)}",
                        code="not-cloudevent")
    try:
        message = ce_kafka.KafkaMessage(headers=header_map, key=key, value=value)
        ce = ce_kafka.from_binary(message, _FORMAT, CloudEvent)
    except (BaseCloudEventException, ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not a binary-mode CloudEvent: {exc}", code="not-cloudevent") from exc
    model = model_for_type(ce.get_type())
    if model is None:
        raise WireError(f"unknown event type {ce.get_type()!r}", code="unknown-type")
    data = ce.get_data()
    if not isinstance(data, dict):
        raise WireError(f"value is not a JSON object (content-type {ce.get_datacontenttype()!r})",
                        code="not-object")
    data = _known_fields(model, ce.get_type(), data)
    try:
        event = model.model_validate(data)
    except ValidationError as exc:
        raise WireError(f"schema-invalid {ce.get_type()}: {_brief(exc)}",
                        code="schema-invalid") from exc
    expected_key = partition_key(event)
    if expected_key is not None and (key is None or key.decode(errors="replace") != expected_key):
        raise WireError(f"message key {key[:80] if key else key!r} does not match the event's "
                        f"agent {expected_key!r}", code="key-mismatch")
    return event


def _known_fields(model: type[WireModel], ce_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A newer minor version may only add optional fields: read it without them.

    Fields of the version we know stay strictly validated; unknown fields of our own (or an
    older) minor version are still an error.
    """
    version = type_version(ce_type)
    if version is None or version[1] <= KNOWN_MINOR:
        return data
    return {name: value for name, value in data.items() if name in model.model_fields}


def _brief(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
