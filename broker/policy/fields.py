"""Located field readers of the loader. Imports cel, broker.errors/scopes/policy, stdlib.

Every failure is a PolicyError naming the file, the line and (when inside one) the rule; a type
error in a CEL condition also names the column and suggests a fix.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from functools import lru_cache

import cel

from broker.errors import PolicyError
from broker.policy.cel_check import check
from broker.policy.cel_inputs import Inputs
from broker.policy.model import Condition, format_duration
from broker.policy.source import LineList, LineMap
from broker.scopes import is_glob, is_valid_scope

_DURATION_RE = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The loop variable of a one-variable comprehension macro (`list.exists(x, ...)`): CEL lists it
# among the referenced variables, but the macro binds it; it is not read from the context.
_BOUND_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


@dataclass(frozen=True)
class At:
    """Where the loader is: the file, the rule being read (if any), and whether conditions are
    type-checked (not for a revision already run, which must load as it ran)."""

    file: str
    rule: str | None = None
    check_types: bool = True

    def error(self, message: str, line: int | None, *, column: int | None = None,
              suggestion: str | None = None) -> PolicyError:
        """A PolicyError at ``line`` (and ``column``) of this file, naming this rule."""
        return PolicyError(message, file=self.file, line=line, rule=self.rule, column=column,
                           suggestion=suggestion)


def check_fields(body: LineMap, at: At, what: str, *, required: Collection[str],
                 optional: Collection[str]) -> None:
    """Reject unknown fields (listing the allowed ones), then missing required fields."""
    allowed = sorted({*required, *optional})
    for key in body:
        if key not in allowed:
            raise at.error(f"unknown field {key!r} in {what}; allowed: {', '.join(allowed)}",
                           body.line_of(key))
    for key in required:
        if key not in body:
            raise at.error(f"missing field {key!r} in {what}", body.line)


def mapping(body: LineMap, key: str, at: At) -> LineMap:
    """The mapping under ``key`` (required)."""
    value = body.get(key)
    if not isinstance(value, LineMap):
        raise at.error(f"{key!r} must be a mapping", body.line_of(key))
    return value


def string(body: LineMap, key: str, at: At, *, default: str | None = None) -> str:
    """The non-empty string under ``key``; ``default`` when absent (required if None)."""
    if key not in body and default is not None:
        return default
    value = body.get(key)
    if not isinstance(value, str) or not value.strip():
        raise at.error(f"{key!r} must be a non-empty string", body.line_of(key))
    return value


def choice(body: LineMap, key: str, at: At, choices: tuple[str, ...]) -> str:
    """One of ``choices`` under ``key``; the first choice when absent."""
    value = body.get(key, choices[0])
    if value not in choices:
        raise at.error(f"{key!r} must be one of {', '.join(choices)}; got {value!r}",
                       body.line_of(key))
    return str(value)


def items(body: LineMap, key: str, at: At, *, required: bool) -> list[tuple[object, int]]:
    """The items of the list under ``key`` with their lines; [] when absent and optional."""
    if key not in body and not required:
        return []
    value = body.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, LineList) or (required and not value):
        raise at.error(f"{key!r} must be a {'non-empty ' if required else ''}list",
                       body.line_of(key))
    return list(zip(value, value.lines, strict=True))


def strings(body: LineMap, key: str, at: At, *, required: bool) -> list[tuple[str, int]]:
    """The string items of the list under ``key`` with their lines."""
    result: list[tuple[str, int]] = []
    for value, line in items(body, key, at, required=required):
        if not isinstance(value, str):
            raise at.error(f"each item of {key!r} must be a string; got {value!r}", line)
        result.append((value, line))
    return result


def scope_list(body: LineMap, key: str, at: At, *, allow_glob: bool, what: str,
               required: bool = True) -> list[tuple[str, int]]:
    """The scopes (or, with ``allow_glob``, globs) under ``key``, each checked with its line."""
    result = strings(body, key, at, required=required)
    for scope, line in result:
        if is_valid_scope(scope, allow_glob=allow_glob):
            continue
        if not allow_glob and is_valid_scope(scope, allow_glob=True):
            raise at.error(f"glob {scope!r} is not allowed in {what}; name concrete scopes "
                           "(globs belong in ceilings and deny rules)", line)
        hint = ", '*' only as a whole segment" if allow_glob or is_glob(scope) else ""
        raise at.error(f"bad scope {scope!r} in {what}: expected namespace:resource.action "
                       f"(lowercase letters, digits, '_' and '-'{hint})", line)
    return result


def parse_duration(value: object) -> int | None:
    """Seconds of ``20s``/``15m``/``2h``/``1d``, of a positive int or digits; None if malformed."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else None
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if match is None or int(match[1]) == 0:
        return None
    return int(match[1]) * _UNIT_S[match[2] or "s"]


def optional_duration(body: LineMap, key: str, at: At, *,
                      cap: tuple[str, int] | None = None) -> int | None:
    """The duration under ``key`` in seconds (None when absent), at most ``cap`` if given."""
    if key not in body:
        return None
    seconds = parse_duration(body[key])
    if seconds is None:
        raise at.error(f"bad duration {body[key]!r} for {key!r}: use a positive int of seconds "
                       "or <n>s, <n>m, <n>h, <n>d (e.g. 20s, 15m, 2h, 1d)", body.line_of(key))
    if cap is not None and seconds > cap[1]:
        raise at.error(f"{key} {format_duration(seconds)} exceeds {cap[0]} "
                       f"{format_duration(cap[1])}, which caps every grant", body.line_of(key))
    return seconds


def optional_positive_int(body: LineMap, key: str, at: At) -> int | None:
    """The positive int under ``key``, or None when absent."""
    if key not in body:
        return None
    value = body[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise at.error(f"{key!r} must be a positive integer; got {value!r}", body.line_of(key))
    return value


@lru_cache(maxsize=1024)
def _compile(source: str) -> cel.Program:
    """Programs are immutable: a reload of the same expression reuses its compiled program."""
    return cel.compile(source)


def condition(body: LineMap, at: At, kind: str, inputs: Inputs) -> Condition:
    """Compile the CEL expression under ``when``, check the variables it references, then
    type-check it against the declared ``inputs`` (their fields and types)."""
    source, line = body.get("when"), body.line_of("when")
    if not isinstance(source, str) or not source.strip():
        raise at.error("'when' must be a CEL expression string (quote literals: when: \"true\")",
                       line)
    try:
        program = _compile(source)
    except ValueError as exc:
        raise at.error(f"CEL expression does not compile: {exc}", line) from exc
    used = frozenset(program.variables()) - set(_BOUND_RE.findall(source))
    unknown = sorted(used - inputs.names)
    if unknown:
        raise at.error(
            f"CEL expression references {', '.join(map(repr, unknown))}, which {kind} rules do "
            f"not provide; available: {', '.join(sorted(inputs.names))}", line)
    problem = check(source, inputs) if at.check_types else None
    if problem is not None:
        line, column = body.position("when", problem.offset)
        raise at.error(f"CEL type error: {problem.message}", line, column=column,
                       suggestion=problem.suggestion)
    return Condition(source, program, used)
