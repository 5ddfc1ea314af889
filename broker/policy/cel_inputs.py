"""CEL input types derived from the wire models' JSON Schema. Imports pydantic, protobuf, stdlib.

A condition reads its variables as ``model_dump(mode="json")`` of pydantic models, so the types it
sees are those of the models' serialization JSON Schema: numbers are doubles, integers ints,
datetimes RFC 3339 strings, ``X | None`` nullable, unions and free-form values dynamic. This
module turns that schema into protobuf message descriptors, the form in which the CEL type
checker takes declared struct types; a field added to a model is declared the moment it exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, struct_pb2, wrappers_pb2
from pydantic import BaseModel

PACKAGE = "permbroker.inputs"
TIMESTAMP = "timestamp"  # a variable of CEL type timestamp (``now``), not a model

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {"string": _F.TYPE_STRING, "integer": _F.TYPE_INT64, "number": _F.TYPE_DOUBLE,
            "boolean": _F.TYPE_BOOL}
_CEL_NAMES = {"string": "string", "integer": "int", "number": "double", "boolean": "bool"}
_WRAPPERS = {"string": "StringValue", "integer": "Int64Value", "number": "DoubleValue",
             "boolean": "BoolValue"}
_DYN = ("google.protobuf.Value", "dyn")
_STRUCT = ("google.protobuf.Struct", "map(string, dyn)")

Schema = dict[str, Any]


@dataclass(frozen=True)
class Inputs:
    """The variables one kind of condition reads: (name, model class or TIMESTAMP), in order."""

    variables: tuple[tuple[str, type[BaseModel] | str], ...]

    @property
    def names(self) -> frozenset[str]:
        """The variable names."""
        return frozenset(name for name, _ in self.variables)


@dataclass(frozen=True)
class _Kind:
    """How one schema node is declared: a proto field type and how CEL names it."""

    proto: int
    cel: str  # the type as CEL prints it: double, list(string), ModelInfo, ...
    message: str | None = None  # the full message name, for message fields
    repeated: bool = False


@dataclass
class Declared:
    """The declared structs of some inputs: the descriptor file and each struct's fields."""

    file: descriptor_pb2.FileDescriptorProto
    fields: dict[str, dict[str, str]] = field(default_factory=dict)  # struct -> field -> type

    def pool(self) -> descriptor_pool.DescriptorPool:
        """A descriptor pool holding the structs and the well-known types they use."""
        pool = descriptor_pool.DescriptorPool()
        for module in (struct_pb2, wrappers_pb2):
            proto = descriptor_pb2.FileDescriptorProto()
            module.DESCRIPTOR.CopyToProto(proto)
            pool.Add(proto)
        pool.Add(self.file)
        return pool


def declare(inputs: Inputs) -> Declared:
    """Declare every model the inputs name (and the models they nest) as a struct."""
    declared = Declared(descriptor_pb2.FileDescriptorProto(
        name="permbroker_inputs.proto", package=PACKAGE, syntax="proto3",
        dependency=["google/protobuf/struct.proto", "google/protobuf/wrappers.proto"]))
    for _, source in inputs.variables:
        if isinstance(source, type):
            schema = source.model_json_schema(mode="serialization")
            for name, sub in schema.get("$defs", {}).items():
                _message(declared, name, sub)
            _message(declared, source.__name__, schema)
    return declared


def struct_name(model: type[BaseModel]) -> str:
    """The full CEL name of a model's struct."""
    return f"{PACKAGE}.{model.__name__}"


def _message(declared: Declared, name: str, schema: Schema) -> None:
    full = f"{PACKAGE}.{name}"
    if full in declared.fields:
        return
    message = declared.file.message_type.add(name=name)
    types: dict[str, str] = {}
    for number, (field_name, sub) in enumerate(schema.get("properties", {}).items(), start=1):
        kind = _kind(sub, message, field_name)
        message.field.add(name=field_name, number=number, type=kind.proto,
                          type_name=f".{kind.message}" if kind.message else None,
                          label=_F.LABEL_REPEATED if kind.repeated else _F.LABEL_OPTIONAL)
        types[field_name] = kind.cel
    declared.fields[full] = types


def _ref(schema: Schema) -> str | None:
    ref = schema.get("$ref")
    return f"{PACKAGE}.{ref.rsplit('/', 1)[-1]}" if isinstance(ref, str) else None


def _single(schema: Schema) -> _Kind:
    """A non-repeated field: a struct, a scalar, a nullable scalar, or dyn."""
    ref = _ref(schema)
    if ref is not None:
        return _Kind(_F.TYPE_MESSAGE, ref.rsplit(".", 1)[-1], ref)
    options = schema.get("anyOf")
    if isinstance(options, list):
        present = [o for o in options if o.get("type") != "null"]
        if len(present) == 1 and len(present) < len(options):
            inner = _single(present[0])
            scalar = present[0].get("type")
            if inner.message is None and scalar in _WRAPPERS:  # a nullable scalar
                return _Kind(_F.TYPE_MESSAGE, f"{inner.cel}, or null",
                             f"google.protobuf.{_WRAPPERS[scalar]}")
            return inner  # a struct is nullable as it is
        return _Kind(_F.TYPE_MESSAGE, _DYN[1], _DYN[0])
    scalar = schema.get("type")
    if scalar in _SCALARS:
        time = " (an RFC 3339 time)" if schema.get("format") == "date-time" else ""
        return _Kind(_SCALARS[scalar], _CEL_NAMES[scalar] + time)
    if scalar == "object":
        return _Kind(_F.TYPE_MESSAGE, _STRUCT[1], _STRUCT[0])
    return _Kind(_F.TYPE_MESSAGE, _DYN[1], _DYN[0])


def _kind(schema: Schema, owner: descriptor_pb2.DescriptorProto, name: str) -> _Kind:
    """A field of ``owner``: lists and maps of single values, or a single value."""
    if schema.get("type") == "array":
        items = schema.get("items")
        element = _single(items) if isinstance(items, dict) else _Kind(
            _F.TYPE_MESSAGE, _DYN[1], _DYN[0])
        return _Kind(element.proto, f"list({element.cel})", element.message, repeated=True)
    values = _map_values(schema)
    if values is None:
        return _single(schema)
    value = _single(values)
    entry = owner.nested_type.add(name=f"{name.title().replace('_', '')}Entry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=value.proto, label=_F.LABEL_OPTIONAL,
                    type_name=f".{value.message}" if value.message else None)
    return _Kind(_F.TYPE_MESSAGE, f"map(string, {value.cel})",
                 f"{PACKAGE}.{owner.name}.{entry.name}", repeated=True)


def _map_values(schema: Schema) -> Schema | None:
    """The value schema of a string-keyed map (None: not a map)."""
    if schema.get("type") != "object" or "$ref" in schema:
        return None
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        return extra
    patterns = list(schema.get("patternProperties", {}).values())
    if len(patterns) == 1 and isinstance(patterns[0], dict):
        return patterns[0]
    return None
