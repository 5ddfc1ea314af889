"""Static type check of a condition against its declared inputs. Imports cel_expr_python, policy.

The checker is CEL's reference one (cel-cpp, through cel-expr-python); the conditions themselves
run on common-expression-language, which has no checker. The two agree on CEL's types with one
exception: the checker refuses to compare an int with a double (``x >= 1`` for a double ``x``),
which the runtime allows; the fix it suggests (``1.0``) means the same in both. Its findings are
turned into problems that name the field and suggest a fix (difflib for misspelt names); a
finding whose wording is not recognised is still an error, reported in the checker's words.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache

from cel_expr_python import cel

from broker.policy.cel_inputs import PACKAGE, TIMESTAMP, Inputs, declare, struct_name

# The functions and macros of CEL's standard library, for "did you mean" on an unknown name.
FUNCTIONS = (
    "all", "bool", "bytes", "contains", "double", "duration", "dyn", "endsWith", "exists",
    "exists_one", "filter", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
    "getFullYear", "getHours", "getMilliseconds", "getMinutes", "getMonth", "getSeconds", "has",
    "int", "map", "matches", "size", "startsWith", "string", "timestamp", "type", "uint",
)
_ISSUE_RE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
_UNKNOWN_FIELD_RE = re.compile(r"undefined field '(\w+)' not found in struct '([\w.]+)'")
_OVERLOAD_RE = re.compile(r"found no matching overload for '([^']+)' applied to '\((.*)\)'")
_SELECT_RE = re.compile(r"expression of type '(.+)' cannot be the operand of a select")
_UNDECLARED_RE = re.compile(r"undeclared reference to '(\w+)'")
# A select chain (``request.confidence``) ending just before, or starting just after, a point.
_PATH_BEFORE_RE = re.compile(r"(?<![\w.)\]])([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*$")
_PATH_AFTER_RE = re.compile(r"\s*([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\b(?!\s*\()")
_FIELD_AFTER_RE = re.compile(r"\.\s*(\w*)")
_INFIX = {"_==_": "==", "_!=_": "!=", "_<_": "<", "_<=_": "<=", "_>_": ">", "_>=_": ">=",
          "_+_": "+", "_-_": "-", "_*_": "*", "_/_": "/", "_%_": "%", "@in": "in",
          "_&&_": "&&", "_||_": "||"}
_OTHER_OPS = {"_[_]": "[]", "_?_:_": "? :", "!_": "!", "-_": "-"}
_OTHER_HINTS = {"[]": "index a list with an int, and a map with a key of its key type",
                "? :": "give both branches of ? : the same type"}
_NUMBERS = frozenset({"int", "uint", "double"})
_TYPE_NAMES = {"google.protobuf.Timestamp": "timestamp", "google.protobuf.Duration": "duration"}


@dataclass(frozen=True)
class Problem:
    """What is wrong with a condition, where (0-based offset into it) and how to fix it."""

    offset: int
    message: str
    suggestion: str | None = None


@dataclass(frozen=True)
class _Checker:
    """A checking environment for one set of inputs, and the fields of its structs."""

    env: cel.Env
    variables: dict[str, str]  # variable -> struct name, or TIMESTAMP
    fields: dict[str, dict[str, str]]  # struct name -> field -> CEL type


@lru_cache(maxsize=8)
def _checker(inputs: Inputs) -> _Checker:
    declared = declare(inputs)
    variables = {name: struct_name(source) if isinstance(source, type) else TIMESTAMP
                 for name, source in inputs.variables}
    types = {name: cel.Type.TIMESTAMP if struct == TIMESTAMP else cel.Type(struct)
             for name, struct in variables.items()}
    return _Checker(cel.NewEnv(declared.pool(), variables=types), variables, declared.fields)


def check(source: str, inputs: Inputs) -> Problem | None:
    """The first type error of ``source`` read with ``inputs``, or None when it type-checks."""
    checker = _checker(inputs)
    try:
        expression = checker.env.compile(source)
    except (RuntimeError, ValueError) as exc:
        return _explain(checker, source, str(exc))
    result = expression.return_type()
    if result == cel.Type.BOOL or result == cel.Type.DYN:
        return None
    name = result.name()
    return Problem(0, f"the condition is {_a(_type_name(name if '.' in name else name.lower()))},"
                   " not a bool",
                   "compare it, e.g. request.confidence >= 0.9, or test it with has() or in")


def _explain(checker: _Checker, source: str, text: str) -> Problem:
    found = _ISSUE_RE.search(text)
    if found is None:
        return Problem(0, f"CEL type check failed: {text.strip().splitlines()[0]}")
    offset, message = _offset(source, int(found[1]), int(found[2])), found[3].strip()
    if (match := _UNKNOWN_FIELD_RE.search(message)) is not None:
        return _unknown_field(checker, source, offset, match[1], match[2])
    if (match := _OVERLOAD_RE.search(message)) is not None:
        return _mismatch(checker, source, offset, match[1], _split_types(match[2]))
    if (match := _SELECT_RE.search(message)) is not None:
        path = _path_before(source, offset) or "the value"
        after = _FIELD_AFTER_RE.match(source, offset)
        field = after[1] if after else ""
        return Problem(offset, f"{path} is {_a(_type_name(match[1]))} and has no field {field!r}",
                       "only structs and maps have fields")
    if (match := _UNDECLARED_RE.search(message)) is not None:
        close = difflib.get_close_matches(match[1], (*FUNCTIONS, *checker.variables), n=1)
        return Problem(offset, f"unknown function or variable {match[1]!r}",
                       f"did you mean {close[0]}?" if close else None)
    return Problem(offset, message)


def _unknown_field(checker: _Checker, source: str, offset: int, field: str,
                   struct: str) -> Problem:
    fields = _fields_of(checker, struct)
    where = _path_before(source, offset) or _type_name(struct)
    after = _FIELD_AFTER_RE.match(source, offset)
    at = after.start(1) if after else offset  # the misspelt name, not the dot before it
    close = difflib.get_close_matches(field, fields, n=1)
    suggestion = (f"did you mean {where}.{close[0]}?" if close
                  else f"{where} has: {', '.join(sorted(fields))}")
    return Problem(at, f"unknown field {field!r} of {where} ({_type_name(struct)})", suggestion)


def _mismatch(checker: _Checker, source: str, offset: int, op: str,
              types: list[str]) -> Problem:
    shown = _INFIX.get(op) or _OTHER_OPS.get(op, op)
    paths: list[str] = []
    if op in _INFIX and len(types) == 2:
        paths = [p for p in (_path_before(source, offset),
                             _path_after(source, offset + len(shown))) if p]
    typed = [(path, kind) for path in paths if (kind := _field_type(checker, path)) is not None]
    named = "".join(f"; {path} is {_a(kind)}" for path, kind in typed)
    readable = ", ".join(_type_name(t) for t in types)
    return Problem(offset, f"type mismatch: no {shown!r} for ({readable}){named}",
                   _hint([_type_name(t) for t in types], typed, shown))


def _hint(types: list[str], typed: list[tuple[str, str]], op: str) -> str:
    """How to make the operands agree, for the usual mistakes."""
    kinds = {kind.removesuffix(", or null") for kind in types}
    if op not in _INFIX.values():
        return _OTHER_HINTS.get(op, f"{op} does not take ({', '.join(types)}); convert the "
                                "argument with int(), double(), string() or timestamp()")
    if kinds <= _NUMBERS and len(kinds) > 1:
        return ("CEL does not mix int and double: write the number as a double (1.0) or an "
                "int (1), or convert with double() or int()")
    if "string" in kinds and kinds & _NUMBERS:
        number = next(((p, k) for p, k in typed if k in _NUMBERS), None)
        if number is None:
            return "did you mean a string? quote the literal, or convert with string()"
        example = "0.9" if number[1] == "double" else "1"
        return f"did you mean a number? e.g. {number[0]} {op} {example}"
    time = next((p for p, k in typed if "RFC 3339" in k), None)
    if time is not None or kinds == {"timestamp", "string"}:
        return (f"did you mean timestamp({time or 'the string'})? it turns an RFC 3339 string "
                "into a time")
    if "duration" in kinds:
        return 'write durations as duration("5m"); a duration is not a number'
    return "convert one side explicitly with int(), double(), string(), timestamp() or duration()"


def _field_type(checker: _Checker, path: str) -> str | None:
    """The declared CEL type of an input path such as ``request.confidence``."""
    head, *rest = path.split(".")
    kind = checker.variables.get(head)
    for name in rest:
        if kind and kind.startswith("map(string, "):  # a map read as map.key
            kind = kind.removeprefix("map(string, ")[:-1]
        else:
            kind = _fields_of(checker, kind or "").get(name)
    return _type_name(kind) if kind and rest else None


def _fields_of(checker: _Checker, struct: str) -> dict[str, str]:
    """The fields of a struct named in full (messages) or short (field types)."""
    return checker.fields.get(struct) or checker.fields.get(f"{PACKAGE}.{struct}", {})


def _path_before(source: str, offset: int) -> str:
    found = _PATH_BEFORE_RE.search(source[:offset])
    return re.sub(r"\s+", "", found[1]) if found else ""


def _path_after(source: str, offset: int) -> str:
    found = _PATH_AFTER_RE.match(source[offset:])
    return re.sub(r"\s+", "", found[1]) if found else ""


def _offset(source: str, line: int, column: int) -> int:
    """The 0-based offset of a 1-based line and column of ``source``."""
    lines = source.split("\n")
    return sum(len(text) + 1 for text in lines[: line - 1]) + column - 1


def _split_types(text: str) -> list[str]:
    """``double, map(string, dyn)`` -> ['double', 'map(string, dyn)']."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    return [*parts, text[start:].strip()]


def _a(kind: str) -> str:
    """``kind`` with its article: 'a double', 'an int'."""
    return f"{'an' if kind[:1].lower() in ('a', 'e', 'i', 'o') else 'a'} {kind}"


def _type_name(name: str) -> str:
    name = _TYPE_NAMES.get(name, name)
    name = re.sub(r"wrapper\((\w+)\)", r"\1, or null", name)
    return name.removeprefix(f"{PACKAGE}.")
