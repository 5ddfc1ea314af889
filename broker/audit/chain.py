"""The audit hash chain (pure): canonical bytes, entry hashes, sealed records and digests.

Imports schemas and stdlib only; signing is passed in as a callable (the keys live in
``broker.adapters.audit.keys``); ``broker.audit.verify`` checks chains.

Each partition of the audit topic is one chain. An entry (an ``AuditRecord``) carries
``chain = {partition, seq, prev_hash, hash, raw_offset, sealed_at}``; ``hash`` = sha256 of the
entry's canonical JSON without ``chain.hash``, so it covers the position and the previous hash.
The sealer writes the canonical JSON bytes as the Kafka value, so a changed byte, a missing entry
or two swapped entries each break the chain at a named entry, and a consistent rewrite (hashes
recomputed) fails the next digest's Ed25519 signature.

A digest is an entry of kind ``audit.digest``; its ``inputs`` hold ``first_seq`` (the first entry
since the previous digest), ``records``, ``key_id`` (16 hex of the public key's sha256),
``algorithm`` and ``signature`` (base64 Ed25519 over ``digest_payload``). Its place in the chain
(partition, seq, prev_hash) is part of what is signed, so a valid digest at seq N vouches for
every entry before it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.events import AuditRecord

GENESIS = "0" * 64
DIGEST_KIND = "audit.digest"
# What a digest's signature covers besides its chain position.
DIGEST_FIELDS = ("first_seq", "records", "key_id", "algorithm")
WITHHELD_LINK = ("partition", "seq", "prev_hash", "hash")


def canonical(data: Any) -> bytes:
    """Canonical JSON (sorted keys, no spaces, UTF-8): the bytes that are hashed and stored."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def entry_hash(data: dict[str, Any]) -> str:
    """sha256 hex of an entry's canonical JSON with ``chain.hash`` left out."""
    chain = dict(data.get("chain") or {})
    chain.pop("hash", None)
    return hashlib.sha256(canonical({**data, "chain": chain})).hexdigest()


@dataclass(frozen=True)
class Position:
    """Where the next entry of a partition goes: its seq and the hash it must link to."""

    partition: int
    seq: int = 0
    prev_hash: str = GENESIS


def _linked(data: dict[str, Any], pos: Position, raw_offset: int, sealed_at: datetime) -> bytes:
    data["chain"] = {
        "partition": pos.partition, "seq": pos.seq, "prev_hash": pos.prev_hash, "hash": GENESIS,
        "raw_offset": raw_offset, "sealed_at": sealed_at.isoformat().replace("+00:00", "Z"),
    }
    data["chain"]["hash"] = entry_hash(data)
    return canonical(data)


def seal_record(
    record: AuditRecord, pos: Position, raw_offset: int, sealed_at: datetime
) -> tuple[AuditRecord, bytes]:
    """The record linked at ``pos``, and the canonical bytes to store as the Kafka value."""
    data = record.model_dump(mode="json", exclude={"chain"})
    value = _linked(data, pos, raw_offset, sealed_at)
    return AuditRecord.model_validate_json(value), value


def digest_payload(data: dict[str, Any]) -> bytes:
    """The bytes a digest's signature covers: its chain position and its ``inputs`` fields."""
    chain, inputs = data.get("chain") or {}, data.get("inputs") or {}
    return canonical({
        "partition": chain.get("partition"), "seq": chain.get("seq"),
        "prev_hash": chain.get("prev_hash"), **{k: inputs.get(k) for k in DIGEST_FIELDS},
    })


def withheld(data: dict[str, Any]) -> dict[str, Any]:
    """An entry left out of a partial export, as its chain link only (partition, seq,
    prev_hash, hash): its successor's prev_hash and the digests still bind it, so the cut
    stays verifiable, and nothing of its content (agent included) is shown."""
    chain = data.get("chain") or {}
    return {"withheld": True, "chain": {k: chain.get(k) for k in WITHHELD_LINK}}


def is_withheld(data: dict[str, Any]) -> bool:
    """True for an entry a partial export withheld (as parsed JSON)."""
    return data.get("withheld") is True


def is_digest(data: dict[str, Any]) -> bool:
    """True for a digest entry (as parsed JSON)."""
    return data.get("kind") == DIGEST_KIND


def seal_digest(
    pos: Position, *, first_seq: int, signed_at: datetime, key_id: str,
    sign: Callable[[bytes], str],
) -> tuple[AuditRecord, bytes]:
    """A signed digest linked at ``pos``: it seals every entry before ``pos.seq``."""
    data: dict[str, Any] = {
        "audit_id": f"digest-{pos.partition}-{pos.seq}",
        "kind": DIGEST_KIND,
        "agent_id": None,
        "occurred_at": signed_at.isoformat().replace("+00:00", "Z"),
        "subject_id": f"partition-{pos.partition}",
        "outcome": "sealed",
        "reasons": [f"seals seq {first_seq}..{pos.seq - 1} of partition {pos.partition}"],
        "rules": [],
        "policy_revision": "",
        "inputs": {"first_seq": first_seq, "records": pos.seq - first_seq, "key_id": key_id,
                   "algorithm": "Ed25519"},
        "chain": {"partition": pos.partition, "seq": pos.seq, "prev_hash": pos.prev_hash},
    }
    data["inputs"]["signature"] = sign(digest_payload(data))
    value = _linked(data, pos, -1, signed_at)
    return AuditRecord.model_validate_json(value), value
