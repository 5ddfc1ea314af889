"""Sensitive values in audit records, stored as keyed HMACs (pure). Imports schemas and stdlib.

As Vault does with its audit devices, a sensitive string is replaced by
``hmac-sha256:<hex>`` = HMAC-SHA256(key, value); an operator who knows a value computes the same
string (``permbroker audit hash VALUE``) and searches for it. Numbers and booleans stay clear.

What is sensitive, in a record's ``inputs``:

* the configured field paths (``DEFAULT_FIELDS``: resources such as account numbers, case ids;
  ``FREE_TEXT_FIELDS`` too when free text is configured sensitive; extra paths from settings);
* every string under a key whose name says secret (token, password, api_key, signature...;
  not `consistency_token`, which is Kafka positions);
* anything shaped like a JWT or a PEM private key, wherever it appears.

A sensitive value that also appears inside free text (``reasons``, a denial's ``reason``, a
signal's ``detail``) is replaced there too, so "narrowed to 2 resource(s): acct-1, acct-2"
carries the two HMACs. Replaying a decision from the redacted inputs then yields the same
redacted text, which is what keeps replay exact: the policy copies resources, it never reads
their content (a condition that reads the content of a redacted field is flagged by replay).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from schemas.events import AuditRecord

HMAC_PREFIX = "hmac-sha256:"
HMAC_RE = re.compile(r"^hmac-sha256:[0-9a-f]{64}$")
DEFAULT_FIELDS = ("request.resources", "request.case_id", "decision.resources", "signal.resource",
                  "grant.resources", "pending.resources")
FREE_TEXT_FIELDS = ("request.reason", "signal.detail", "renewal.reason", "release.reason",
                    "vote.reason")
SECRET_KEY_RE = re.compile(
    r"(?i)(token|secret|passw|api[_-]?key|private[_-]?key|credential|signature|authori[sz]ation"
    r"|bearer|cookie|session)"
)
_SHAPES = (
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*",  # a JWT (JOSE compact form)
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",  # a PEM key
)
SHAPE_RE = re.compile("|".join(_SHAPES), re.S)
# Names that match SECRET_KEY_RE but hold no secret: a consistency token is Kafka positions
# (``ct1:topic@partition:offset``), which a resource service must read back to wait on.
NOT_SECRET_KEYS = frozenset({"consistency_token"})
# Free text where sensitive values are searched and replaced.
FREE_TEXT_KEYS = frozenset({"reasons", "reason", "detail"})
# Identifiers, times and policy vocabulary: never sensitive, never rewritten.
_KEEP_KEYS = frozenset({"kind", "outcome", "policy_revision", "scopes", "granted_scopes",
                        "baseline", "ceiling", "rules", "matched_rules", "rule", "clamped_by",
                        "bundle", "chain", *NOT_SECRET_KEYS})
MIN_EMBEDDED = 4  # shorter values are not searched for inside free text


def hmac_value(key: bytes, value: str) -> str:
    """``hmac-sha256:<hex>`` of one value: what the audit stores instead of it."""
    return HMAC_PREFIX + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def _is_kept(name: str) -> bool:
    return name in _KEEP_KEYS or name.endswith(("_id", "_at", "_until", "_ids"))


def _at_path(data: Any, path: list[str]) -> list[str]:
    """The strings at a dotted path (lists are walked through)."""
    if isinstance(data, list):
        return [s for item in data for s in _at_path(item, path)]
    if not path:
        return [data] if isinstance(data, str) else []
    if isinstance(data, dict) and path[0] in data:
        return _at_path(data[path[0]], path[1:])
    return []


def _replace_at(data: Any, path: list[str], fn: Callable[[str], str]) -> Any:
    """``data`` with ``fn`` applied to the strings at a dotted path."""
    if isinstance(data, list):
        return [_replace_at(item, path, fn) for item in data]
    if not path:
        return fn(data) if isinstance(data, str) else data
    if isinstance(data, dict) and path[0] in data:
        return {**data, path[0]: _replace_at(data[path[0]], path[1:], fn)}
    return data


@functools.lru_cache(maxsize=4096)  # key names are a small vocabulary; this ran ~100x a record
def _names_secret(key: object) -> bool:
    return str(key) not in NOT_SECRET_KEYS and bool(SECRET_KEY_RE.search(str(key)))


def _under_secret_keys(data: Any, secret: bool = False) -> list[str]:
    if isinstance(data, dict):
        return [s for k, v in data.items()
                for s in _under_secret_keys(v, secret or _names_secret(k))]
    if isinstance(data, list):
        return [s for item in data for s in _under_secret_keys(item, secret)]
    return [data] if secret and isinstance(data, str) else []


@dataclass(frozen=True)
class Redactor:
    """Replaces sensitive values of audit records by their keyed HMAC."""

    key: bytes
    fields: tuple[str, ...] = DEFAULT_FIELDS

    @classmethod
    def configured(cls, key: bytes, *, free_text: bool, extra: Iterable[str] = ()) -> Redactor:
        """The default fields, plus free text when asked, plus extra dotted paths."""
        fields = DEFAULT_FIELDS + (FREE_TEXT_FIELDS if free_text else ()) + tuple(extra)
        return cls(key, tuple(dict.fromkeys(f for f in fields if f)))

    def hash(self, value: str) -> str:
        """The HMAC form of one value."""
        return hmac_value(self.key, value)

    def sensitive_values(self, inputs: dict[str, Any]) -> set[str]:
        """Every sensitive string of a record's inputs (configured paths and secret keys)."""
        found = {s for f in self.fields for s in _at_path(inputs, f.split("."))}
        found.update(_under_secret_keys(inputs))
        return {s for s in found if s and not HMAC_RE.fullmatch(s)}

    def redact(self, record: AuditRecord, also: Iterable[str] = ()) -> AuditRecord:
        """The record with every sensitive value (and ``also``) replaced by its HMAC."""
        data = record.model_dump(mode="json")
        inputs = data["inputs"]
        values = self.sensitive_values(inputs) | {v for v in also if v}
        for path in self.fields:
            inputs = _replace_at(inputs, path.split("."), self._hash_clear)
        data["inputs"] = self._secrets(inputs, secret=False)
        embedded = sorted((v for v in values if len(v) >= MIN_EMBEDDED), key=len, reverse=True)
        alternatives = [rf"(?<![A-Za-z0-9_-]){re.escape(v)}(?![A-Za-z0-9_-])" for v in embedded]
        pattern = re.compile("|".join([*alternatives, *_SHAPES]), re.S)
        return AuditRecord.model_validate(self._walk(data, pattern, free=False))

    def _hash_clear(self, value: str) -> str:
        return value if HMAC_RE.fullmatch(value) else self.hash(value)

    def _secrets(self, data: Any, secret: bool) -> Any:
        if isinstance(data, dict):
            return {k: self._secrets(v, secret or _names_secret(k)) for k, v in data.items()}
        if isinstance(data, list):
            return [self._secrets(item, secret) for item in data]
        return self._hash_clear(data) if secret and isinstance(data, str) else data

    def _walk(self, data: Any, pattern: re.Pattern[str], free: bool) -> Any:
        """Free text: embedded sensitive values and secret shapes; elsewhere: shapes only."""
        if isinstance(data, dict):
            return {k: v if _is_kept(k) else self._walk(v, pattern, k in FREE_TEXT_KEYS)
                    for k, v in data.items()}
        if isinstance(data, list):
            return [self._walk(item, pattern, free) for item in data]
        if not isinstance(data, str) or HMAC_RE.fullmatch(data):
            return data
        return (pattern if free else SHAPE_RE).sub(lambda m: self.hash(m.group(0)), data)
