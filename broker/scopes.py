"""Scope algebra: parse, validate, glob-match `namespace:resource.action`. Imports stdlib only.

A scope names a namespace, a dotted resource and an action: ``payments:accounts.freeze``,
``crm:customer.pii.read``. A *glob* (allowed in ceilings and deny rules, never in a requested
scope, a baseline or an escalation rule) replaces whole segments with ``*``:

- ``*`` alone matches every scope;
- ``*`` as the namespace matches any namespace (``*:accounts.read``);
- ``*`` as the last segment matches one or more trailing segments (``payments:accounts.*``
  matches ``payments:accounts.freeze`` and ``payments:accounts.x.y``; ``crm:*`` matches all of crm);
- ``*`` as an inner segment matches exactly one segment (``payments:*.read``).

Partial-segment globs (``payments:acc*``) are invalid: matching is by segment, never by prefix, so
``payments:accounts.*`` can never match ``payments:accountsx.freeze``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

# Same grammar as schemas.events.SCOPE_PATTERN, split by segment so globs can reuse it.
_NAMESPACE = r"[a-z][a-z0-9_-]{0,31}"
_SEGMENT = r"[a-z][a-z0-9_-]{0,63}"
_SCOPE_RE = re.compile(rf"^{_NAMESPACE}:{_SEGMENT}(\.{_SEGMENT})+$")
_NAMESPACE_RE = re.compile(rf"^{_NAMESPACE}$")
_SEGMENT_RE = re.compile(rf"^{_SEGMENT}$")
_MAX_GLOB_REST = 160  # after the ':', as schemas.events.SCOPE_GLOB_PATTERN allows
WILDCARD = "*"


class ParsedScope(NamedTuple):
    """A scope (or glob) split into its namespace and its dot-separated segments."""

    namespace: str
    segments: tuple[str, ...]

    @property
    def resource(self) -> str:
        """Every segment but the last: ``customer.pii`` in ``crm:customer.pii.read``."""
        return ".".join(self.segments[:-1])

    @property
    def action(self) -> str:
        """The last segment: ``read`` in ``crm:customer.pii.read`` (``*`` in ``crm:*``)."""
        return self.segments[-1] if self.segments else WILDCARD

    def __str__(self) -> str:
        if not self.segments:
            return self.namespace
        return f"{self.namespace}:{'.'.join(self.segments)}"


def is_glob(text: str) -> bool:
    """True when ``text`` contains a wildcard (whether or not it is a valid glob)."""
    return WILDCARD in text


def _valid_glob(text: str) -> bool:
    if text == WILDCARD:
        return True
    if text.count(":") != 1:
        return False
    namespace, _, rest = text.partition(":")
    if len(rest) > _MAX_GLOB_REST:
        return False
    if namespace != WILDCARD and not _NAMESPACE_RE.fullmatch(namespace):
        return False
    segments = rest.split(".")
    if not all(s == WILDCARD or _SEGMENT_RE.fullmatch(s) for s in segments):
        return False
    # Without a trailing '*' the glob must still name a resource and an action.
    return segments[-1] == WILDCARD or len(segments) >= 2


def is_valid_scope(text: str, *, allow_glob: bool = False) -> bool:
    """True for a concrete scope; with ``allow_glob``, also for a well-formed segment glob."""
    if _SCOPE_RE.match(text):
        return True
    return allow_glob and is_glob(text) and _valid_glob(text)


def parse_scope(text: str, *, allow_glob: bool = False) -> ParsedScope:
    """Split a scope (or, with ``allow_glob``, a glob) into namespace and segments.

    Raises ``ValueError`` naming the problem when ``text`` is not valid.
    """
    if not is_valid_scope(text, allow_glob=allow_glob):
        if is_glob(text) and not allow_glob:
            raise ValueError(f"{text!r}: a glob ('*') is not allowed here")
        raise ValueError(
            f"{text!r} is not a valid scope (namespace:resource.action, lowercase"
            + (", '*' only as a whole segment)" if allow_glob else ")")
        )
    if text == WILDCARD:
        return ParsedScope(WILDCARD, ())
    namespace, _, rest = text.partition(":")
    return ParsedScope(namespace, tuple(rest.split(".")))


@lru_cache(maxsize=4096)
def _glob_regex(pattern: str) -> re.Pattern[str] | None:
    """The compiled matcher of a valid glob, or None when the pattern is invalid."""
    if not _valid_glob(pattern):
        return None
    if pattern == WILDCARD:
        return re.compile(r"^.+$")
    parsed = parse_scope(pattern, allow_glob=True)
    parts = ["[^:]+" if parsed.namespace == WILDCARD else re.escape(parsed.namespace), ":"]
    last = len(parsed.segments) - 1
    for i, segment in enumerate(parsed.segments):
        if i:
            parts.append(r"\.")
        if segment != WILDCARD:
            parts.append(re.escape(segment))
        else:
            # Trailing '*' spans one or more segments; an inner '*' exactly one.
            parts.append(r"[^:]+" if i == last else r"[^.:]+")
    return re.compile("^" + "".join(parts) + "$")


@lru_cache(maxsize=65536)  # pure and hot: called per requested scope per ceiling entry and rule
def matches(glob_or_scope: str, scope: str) -> bool:
    """True when the concrete ``scope`` is matched by ``glob_or_scope`` (a glob or a scope).

    Fails closed: an invalid scope or an invalid pattern matches nothing.
    """
    if not _SCOPE_RE.match(scope):
        return False
    if not is_glob(glob_or_scope):
        return glob_or_scope == scope
    regex = _glob_regex(glob_or_scope)
    return regex is not None and regex.match(scope) is not None


def within(scope: str, ceiling: Iterable[str]) -> bool:
    """True when some entry (scope or glob) of ``ceiling`` matches the concrete ``scope``."""
    return any(matches(entry, scope) for entry in ceiling)
