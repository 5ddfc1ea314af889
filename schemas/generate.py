"""Generate the contract files: JSON Schema per event, AsyncAPI 3.0. Imports schemas and stdlib.

    python -m schemas.generate           # write schemas/jsonschema/*.json and schemas/asyncapi.yaml
    python -m schemas.generate --check   # exit 1, naming each file that differs from the models

Output is deterministic (sorted keys, 2-space indent, trailing newline) so the committed files
can be compared byte for byte; a drift test holds them to the models and the topic registry.
The AsyncAPI document is written as block YAML by hand (no YAML library in L0): every string
is a JSON string literal, which YAML reads as a double-quoted scalar.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from schemas.events import (
    AGENT_ID_PATTERN,
    EVENT_TYPES,
    AuditWithheld,
    JwksPublished,
    RiskObserved,
    RoutingAnnounced,
    WireModel,
)
from schemas.signing import EVENT_TOKEN_TYPE, SIGNATURE_HEADER
from schemas.topics import (
    ALL_TOPICS,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    Topic,
    tenant_topics,
)

ROOT = Path(__file__).resolve().parent
JSONSCHEMA_DIR = "jsonschema"
ASYNCAPI_FILE = "asyncapi.yaml"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
# The version of the contract document; bump the major with any new major event type.
CONTRACT_VERSION = "1.0.0"
CONTENT_TYPE = "application/json"

Json = dict[str, Any]


def schema_id(event_type: str) -> str:
    """The ``$id`` of the JSON Schema of one event type."""
    return f"urn:permbroker:schema:{event_type}"


def schema_path(event_type: str) -> str:
    """Where the JSON Schema of ``event_type`` lives, relative to the schemas package."""
    return f"{JSONSCHEMA_DIR}/{event_type}.json"


def json_schema(model: type[WireModel], event_type: str) -> Json:
    """The JSON Schema of one event model, with its ``$id``, dialect and title."""
    schema = model.model_json_schema()
    schema["$schema"] = SCHEMA_DIALECT
    schema["$id"] = schema_id(event_type)
    schema["title"] = model.__name__
    return schema


def _summary(model: type[WireModel]) -> str:
    return (model.__doc__ or model.__name__).strip().splitlines()[0]


def _type_pattern(event_type: str) -> str:
    # Consumers accept minor versions of the same major (``...v1.3`` decodes as ``...v1``).
    return "^" + re.escape(event_type) + r"(\.[0-9]+)?$"


def _ce_headers(event_type: str) -> Json:
    """The CloudEvents binary-mode headers (Kafka protocol binding) of one event type."""

    def text(description: str, **extra: Any) -> Json:
        return {"type": "string", "description": description, **extra}

    return {
        "type": "object",
        "properties": {
            "ce_specversion": text("CloudEvents spec version.", const="1.0"),
            "ce_type": text(
                f"Event type; minor versions of {event_type} are accepted.",
                pattern=_type_pattern(event_type),
            ),
            "ce_source": text(
                "URI reference of the producer.", format="uri-reference", minLength=1
            ),
            "ce_id": text(
                "The event's idempotency id (its request, signal, decision or "
                "audit id, or grant id + transition); consumers dedupe on it.",
                minLength=1,
            ),
            "ce_time": text("When the event was produced (RFC 3339, UTC).", format="date-time"),
            "ce_subject": text("The partition key: the agent the event is about."),
            "content-type": text("Media type of the value.", const=CONTENT_TYPE),
            SIGNATURE_HEADER: text(
                f"CloudEvents extension `signature`: a compact JWS ({EVENT_TOKEN_TYPE}) by "
                "the writer's key over the exact value bytes, the CloudEvents id and type and "
                "the key: an agent's or operator's registered key on what they send, the "
                "broker's key (its chain of trust) on everything the broker writes, an "
                "enforcement point's key on its acks and usage reports; required everywhere "
                "(see docs/protocol.md).",
                pattern=r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$",
            ),
        },
        "required": ["ce_specversion", "ce_type", "ce_source", "ce_id", "content-type"],
    }


def _accepts_none(model: type[WireModel], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    args = typing.get_args(annotation)
    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return is_union and type(None) in args


def _key_schema(model: type[WireModel]) -> Json:
    """The Kafka message key: the agent id, so one agent's events stay in one partition."""
    agent = {"type": "string", "pattern": AGENT_ID_PATTERN}
    if model is RiskObserved:
        return {
            "description": "The subject agent id; the resource when the signal names no agent.",
            "type": "string",
        }
    if "agent_id" not in model.model_fields and "enforcement_point" in model.model_fields:
        return {"description": "The enforcement point's name (UTF-8).", **agent}
    if model is JwksPublished:
        return {
            "description": "The issuer (a compacted topic: the latest key set per issuer).",
            "type": "string",
        }
    if model is RoutingAnnounced:
        return {"description": "No key: an announcement names no agent id.", "type": "null"}
    if model is AuditWithheld:
        return {"description": "No key: a withheld entry names no agent id.", "type": "null"}
    if "agent_id" not in model.model_fields:
        raise ValueError(f"{model.__name__} has no agent_id to key on")
    if _accepts_none(model, "agent_id"):
        return {
            "description": "The agent id; no key when the event concerns no agent.",
            "anyOf": [agent, {"type": "null"}],
        }
    return {"description": "The agent id (UTF-8).", **agent}


def _message(model: type[WireModel], event_type: str) -> Json:
    return {
        "name": model.__name__,
        "title": event_type,
        "summary": _summary(model),
        "description": f"CloudEvents 1.0 binary mode: `ce_type` {event_type}, the JSON value "
        f"validated by `{schema_id(event_type)}`, the key the agent id.",
        "contentType": CONTENT_TYPE,
        "headers": _ce_headers(event_type),
        "payload": {"$ref": f"./{schema_path(event_type)}"},
        "bindings": {"kafka": {"key": _key_schema(model), "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _dead_letter_message() -> Json:
    def header(description: str) -> Json:
        return {"type": "string", "description": description}

    return {
        "name": "DeadLetter",
        "title": "dead letter",
        "summary": "A message that could not be decoded or validated, parked with its origin.",
        "contentType": "application/octet-stream",
        "headers": {
            "type": "object",
            "description": "The original headers, plus where the message came from and why "
            "it was parked.",
            "properties": {
                DLQ_REASON: header("Why the message could not be processed."),
                DLQ_TOPIC: header("The topic it was read from."),
                DLQ_PARTITION: header("Its partition (decimal)."),
                DLQ_OFFSET: header("Its offset (decimal)."),
            },
            "required": [DLQ_REASON, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET],
            "additionalProperties": True,
        },
        "payload": {
            "type": "string",
            "format": "binary",
            "description": "The original value, byte for byte.",
        },
        "bindings": {
            "kafka": {
                "key": {"description": "The original key, unchanged.", "type": ["string", "null"]},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _message_ids(topic: Topic, names: dict[str, str]) -> list[str]:
    unknown = [t for t in topic.event_types if t not in names]
    if unknown:
        raise ValueError(f"topic {topic.name} lists unknown event types: {', '.join(unknown)}")
    return [names[t] for t in topic.event_types] or ["DeadLetter"]


def _channel(topic: Topic, names: dict[str, str]) -> Json:
    config: Json = {
        "cleanup.policy": topic.cleanup_policy.split(","),
        "retention.ms": topic.retention_ms,
        **topic.config,
    }
    return {
        "address": topic.name,
        "description": topic.description,
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in _message_ids(topic, names)},
        "bindings": {
            "kafka": {
                "topic": topic.name,
                "partitions": topic.partitions,
                "topicConfiguration": config,
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _tenant_channel(topic: Topic, names: dict[str, str]) -> Json:
    """A channel every declared tenant has one of (``{tenant}`` in its address)."""
    return {**_channel(topic, names),
            "parameters": {"tenant": {"description": "A declared tenant's id."}}}


def asyncapi() -> Json:
    """The AsyncAPI 3.0 document: one channel per topic (a tenant's own topics with the tenant
    as a parameter), one message per event type on them."""
    names = {event_type: model.__name__ for model, event_type in EVENT_TYPES.items()}
    own = tenant_topics("{tenant}")
    on_topics = {t for topic in (*ALL_TOPICS, *own) for t in topic.event_types}
    messages = {
        model.__name__: _message(model, event_type)
        for model, event_type in EVENT_TYPES.items()
        if event_type in on_topics
    }
    if any(not topic.event_types for topic in ALL_TOPICS):
        messages["DeadLetter"] = _dead_letter_message()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "permbroker wire contract",
            "version": CONTRACT_VERSION,
            "description": "Events of the permbroker permission broker on Kafka. Every event is "
            "a CloudEvents 1.0 binary-mode message: `ce_*` headers, a JSON value validated by "
            "the event type's JSON Schema, and the agent id as key, so every event about one "
            "agent lands in one partition, in order. Generated by `python -m schemas.generate` "
            "from schemas/events/ and schemas/topics.py; do not edit by hand.",
        },
        "defaultContentType": CONTENT_TYPE,
        "channels": {**{topic.name: _channel(topic, names) for topic in ALL_TOPICS},
                     **{topic.name: _tenant_channel(topic, names) for topic in own}},
        "components": {"messages": messages},
    }


# --- deterministic rendering -------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _yaml_key(key: str) -> str:
    plain = _PLAIN_KEY.match(key) and key.lower() not in _YAML_WORDS
    return key if plain else json.dumps(key)


def _yaml_scalar(value: object) -> str:
    if isinstance(value, dict | list):
        return "{}" if isinstance(value, dict) else "[]"  # only reached when empty
    return json.dumps(value)


def _yaml_lines(value: object, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key in sorted(value):
            item = value[key]
            if isinstance(item, dict | list) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines.extend(_yaml_lines(item, indent + 1))
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list) and item:
                nested = _yaml_lines(item, indent + 1)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines.extend(nested[1:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    return lines


def to_yaml(document: Json) -> str:
    """Block YAML with sorted keys and JSON-quoted strings; safe for any JSON document."""
    return "\n".join(_yaml_lines(document, 0)) + "\n"


def to_json(document: Json) -> str:
    """JSON with sorted keys, 2-space indent and a trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def render() -> dict[str, str]:
    """Every generated file: path relative to the schemas package -> exact text."""
    files = {
        schema_path(event_type): to_json(json_schema(model, event_type))
        for model, event_type in EVENT_TYPES.items()
    }
    files[ASYNCAPI_FILE] = to_yaml(asyncapi())
    return dict(sorted(files.items()))


def _stale(root: Path, expected: dict[str, str]) -> list[str]:
    folder = root / JSONSCHEMA_DIR
    found = sorted(p.relative_to(root).as_posix() for p in folder.glob("*.json"))
    return [name for name in found if name not in expected]


def drift(root: Path = ROOT) -> list[str]:
    """Files under ``root`` that differ from the generator: changed, missing or stale."""
    expected = render()
    changed = [
        name
        for name, text in expected.items()
        if not (root / name).is_file() or (root / name).read_text("utf-8") != text
    ]
    return sorted(changed + _stale(root, expected))


def write(root: Path = ROOT) -> list[str]:
    """Write every generated file under ``root`` and delete stale schemas; return what changed."""
    expected = render()
    changed = drift(root)
    (root / JSONSCHEMA_DIR).mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = root / name
        if name in expected:
            path.write_text(expected[name], "utf-8")
        else:
            path.unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    """Command line: write the files, or with ``--check`` report drift and exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare instead of writing; exit 1 listing drifted files",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check:
        drifted = drift(args.root)
        for name in drifted:
            print(f"drifted: {args.root / name}", file=sys.stderr)
        if drifted:
            print("run `python -m schemas.generate` and commit the result", file=sys.stderr)
        return 1 if drifted else 0
    for name in write(args.root):
        verb = "wrote" if (args.root / name).exists() else "removed"
        print(f"{verb} {args.root / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
