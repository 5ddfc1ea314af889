"""The compact Redis form of a decision record (idempotency under redelivery). Imports stdlib.

A decision record used to be the decision's JSON (about 1,150 bytes in Redis) plus a separate
``published`` marker key (about 120 bytes). Now it is one value: one byte saying whether the
decision reached Kafka (``0``/``1``; ``mark_published`` flips it in place with SETRANGE, which
keeps the key's absolute expiry), one format byte, then the JSON deflated against a preset
dictionary of the field names and phrases every decision repeats. A value that starts with ``{``
is a record written before this format (its marker is the old ``published`` key).

The dictionary is part of the stored format: never edit ``DICT_V1``; add a ``DICT_V2`` with a new
format byte instead, and keep reading v1.
"""

from __future__ import annotations

import zlib

UNPUBLISHED, PUBLISHED = b"0", b"1"
FORMAT_V1 = b"\x01"
LEGACY = b"{"

# The shape of a decision's JSON (schemas.events.EscalationDecided): keys, enum values and the
# phrases of reasons, most frequent last (zlib prefers the dictionary's end). Generic on
# purpose: no scope, rule or resource name of any policy bundle.
DICT_V1 = (
    b'"denied":[{"scope":"","rule":"","reason":""}],"clamped_by":null,"consistency_token":null,'
    b'"outcome":"denied","outcome":"partial","reasons":["denied ","narrowed to ","resource(s): '
    b'"by rule ","duration ","s, clamped by rule ",": max_duration ","s (requested ","s)",'
    b'{"decision_id":"decision-","request_id":"req-","agent_id":"","outcome":"granted",'
    b'"granted_scopes":[":",":"],"resources":["'
    b'"],"denied":[],"grant_id":"grant-","expires_at":"T:.Z","duration_s":,"clamped_by":"rule '
    b'","matched_rules":[""],"reasons":["granted  by rule ",'
    b'"policy_revision":"sha256:","decided_at":"T:.Z","consistency_token":null}'
)


def pack(decision_json: bytes | str, *, published: bool = False) -> bytes:
    """The stored value of a decision record."""
    raw = decision_json.encode() if isinstance(decision_json, str) else decision_json
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, zdict=DICT_V1)
    body = deflate.compress(raw) + deflate.flush()
    return (PUBLISHED if published else UNPUBLISHED) + FORMAT_V1 + body


def unpack(value: bytes) -> tuple[bytes, bool | None]:
    """(decision JSON, published?) of a stored record; published None for a legacy record."""
    if value[:1] == LEGACY:
        return value, None
    flag, fmt, body = value[:1], value[1:2], value[2:]
    if fmt != FORMAT_V1 or flag not in (UNPUBLISHED, PUBLISHED):
        raise ValueError(f"unknown decision record format {value[:2]!r}")
    inflate = zlib.decompressobj(-15, zdict=DICT_V1)
    return inflate.decompress(body) + inflate.flush(), flag == PUBLISHED
