"""Verifying audit hash chains (pure): name the entry where a chain breaks, and raw gaps.

Imports broker.audit.chain, schemas and stdlib; signature checks are passed in (see
``broker.adapters.audit.keys.signature_check``).

Entries of one partition are walked in offset order. Each break is reported once, at the entry
that shows it: bytes that are not the canonical form the sealer wrote or do not match their hash
(altered), a seq gap (deleted), a seq lower than expected (out of order, and the entry reported
missing before it is re-described as moved), a prev_hash that does not match (the entry before
was re-hashed or replaced), a digest whose signature fails (entries rewritten after sealing) or
whose key is unknown, and a raw offset sealed twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from broker.audit.chain import (
    GENESIS,
    WITHHELD_LINK,
    canonical,
    digest_payload,
    entry_hash,
    is_digest,
    is_withheld,
)
from schemas.events import AuditRecord

# check(key_id, payload, signature_b64) -> True/False, or None when no public key has that id.
SignatureCheck = Callable[[str, bytes, str], bool | None]


@dataclass(frozen=True)
class Entry:
    """One stored audit entry as read back: where it sits, and its bytes or parsed JSON."""

    partition: int
    offset: int
    value: bytes | None = None  # the exact Kafka value, when read from a topic
    data: dict[str, Any] | None = None  # parsed JSON, when read from an export


@dataclass(frozen=True)
class Problem:
    """One break in a chain, naming the entry that shows it."""

    partition: int
    offset: int
    seq: int | None
    audit_id: str
    message: str

    def __str__(self) -> str:
        seq = f"seq {self.seq}" if self.seq is not None else "seq ?"
        return (f"partition {self.partition} offset {self.offset} ({seq}, "
                f"{self.audit_id or 'unreadable'}): {self.message}")


@dataclass
class ChainReport:
    """What verifying one partition found."""

    partition: int
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    digests: int = 0
    sealed_through: int | None = None  # last seq covered by a valid digest
    unsealed: int = 0  # entries after the last valid digest
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_offsets: list[int] = field(default_factory=list)


def _parse(entry: Entry) -> tuple[dict[str, Any] | None, str]:
    if entry.data is not None:
        return entry.data, ""
    if entry.value is None:
        return None, "empty value (tombstone) in the audit chain"
    try:
        data = json.loads(entry.value)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: the stored bytes were altered ({exc})"
    if not isinstance(data, dict):
        return None, "not a JSON object: the stored bytes were altered"
    try:
        if canonical(data) != entry.value:
            return data, "bytes differ from the canonical form the sealer wrote: altered"
    except ValueError as exc:
        return data, f"cannot be put in canonical form: {exc}"
    return data, ""


def _model_error(data: dict[str, Any]) -> str:
    try:
        parsed = AuditRecord.model_validate(data)
    except ValidationError as exc:
        return f"not a valid audit record: {exc.errors()[0]['msg']}"
    if parsed.chain is None:
        return "entry carries no chain link (unsealed record on the sealed topic)"
    return ""


class _Walker:
    """Walks one partition's entries in offset order and records each break once."""

    def __init__(self, partition: int, check: SignatureCheck, from_start: bool) -> None:
        self.report = ChainReport(partition)
        self._check = check
        self._from_start = from_start
        self._expect: int | None = None
        self._prev: tuple[str, int] = (GENESIS, -1)  # hash and offset of the last entry
        self._last_digest: int | None = None
        self._raw_seen: dict[int, int] = {}
        self._missing: dict[int, int] = {}  # seq reported missing -> index of that problem

    def problem(self, entry: Entry, seq: int | None, audit_id: str, message: str) -> None:
        self.report.problems.append(Problem(entry.partition, entry.offset, seq, audit_id, message))

    def walk(self, entry: Entry) -> None:
        data, error = _parse(entry)
        self.report.entries += 1
        if data is None:
            self.problem(entry, None, "", error)
            return
        if is_withheld(data):
            self._withheld(entry, data)
            return
        audit_id = str(data.get("audit_id", ""))
        error = error or _model_error(data)
        chain = data.get("chain")
        if not isinstance(chain, dict) or not isinstance(chain.get("seq"), int):
            self.problem(entry, None, audit_id, error or "entry carries no chain link")
            return
        seq = chain["seq"]
        if error:
            self.problem(entry, seq, audit_id, error)
        elif chain.get("hash") != entry_hash(data):
            self.problem(entry, seq, audit_id, "hash does not match the content: altered")
        elif chain.get("partition") != entry.partition:
            self.problem(entry, seq, audit_id,
                         f"entry belongs to partition {chain.get('partition')}: moved")
        if self._position(entry, chain, audit_id):
            self._count(entry, data, chain, audit_id)

    def _withheld(self, entry: Entry, data: dict[str, Any]) -> None:
        """An entry a partial export withheld: only its place in the chain is checked (its
        hash cannot be recomputed; its successor and the digests after it bind it)."""
        chain = data.get("chain")
        if (set(data) != {"withheld", "chain"} or not isinstance(chain, dict)
                or set(chain) != set(WITHHELD_LINK) or not isinstance(chain.get("seq"), int)):
            self.problem(entry, None, "", "a withheld entry carries its chain link only")
            return
        if chain.get("partition") != entry.partition:
            self.problem(entry, chain["seq"], "", f"entry belongs to partition "
                         f"{chain.get('partition')}: moved")
        if self._position(entry, chain, ""):
            self._count(entry, data, chain, "")

    def _position(self, entry: Entry, chain: dict[str, Any], audit_id: str) -> bool:
        """Check seq and prev_hash; False for an entry that sits before its place."""
        seq = chain["seq"]
        if self._expect is None:
            self._start(entry, chain, audit_id)
        elif seq > self._expect:
            gap = range(self._expect, seq)
            named = f"seq {gap[0]}" if len(gap) == 1 else f"seqs {gap[0]}..{gap[-1]}"
            self.problem(entry, seq, audit_id, f"{named} missing before this entry (deleted)")
            self._missing.update(dict.fromkeys(gap, len(self.report.problems) - 1))
        elif seq < self._expect:
            self._out_of_order(entry, seq, audit_id)
            return False
        elif chain.get("prev_hash") != self._prev[0]:
            self.problem(entry, seq, audit_id, f"prev_hash does not match the hash of seq "
                         f"{seq - 1} (offset {self._prev[1]}): that entry was altered and "
                         "re-hashed, or replaced")
        self._expect, self._prev = seq + 1, (str(chain.get("hash")), entry.offset)
        return True

    def _out_of_order(self, entry: Entry, seq: int, audit_id: str) -> None:
        index = self._missing.pop(seq, None)
        if index is not None:  # reported missing earlier: it was moved, not deleted
            earlier = self.report.problems[index]
            self.report.problems[index] = Problem(
                earlier.partition, earlier.offset, earlier.seq, earlier.audit_id,
                f"out of order: seq {earlier.seq} sits before seq {seq} (offset {entry.offset})")
        self.problem(entry, seq, audit_id, f"out of order: seq {seq} found after seq "
                     f"{(self._expect or 1) - 1} (expected seq {self._expect})")

    def _start(self, entry: Entry, chain: dict[str, Any], audit_id: str) -> None:
        seq = chain["seq"]
        if seq == 0 and chain.get("prev_hash") == GENESIS:
            return
        if self._from_start:
            self.problem(entry, seq, audit_id, f"the chain starts at seq {seq}, not 0: "
                         f"seq 0..{seq - 1} missing (deleted)")
        else:
            self.report.notes.append(f"partition {entry.partition} starts at seq {seq} "
                                     "(earlier entries aged out or were not exported)")

    def _count(self, entry: Entry, data: dict[str, Any], chain: dict[str, Any],
               audit_id: str) -> None:
        report, seq = self.report, chain["seq"]
        report.first_seq = seq if report.first_seq is None else report.first_seq
        report.last_seq = seq
        if is_digest(data):
            self._digest(entry, data, seq, audit_id)
            return
        report.unsealed += 1
        raw_offset = chain.get("raw_offset", -1)
        if isinstance(raw_offset, int) and raw_offset >= 0:
            if raw_offset in self._raw_seen:
                self.problem(entry, seq, audit_id, f"raw offset {raw_offset} sealed twice "
                             f"(also at seq {self._raw_seen[raw_offset]})")
            self._raw_seen[raw_offset] = seq
            report.raw_offsets.append(raw_offset)

    def _digest(self, entry: Entry, data: dict[str, Any], seq: int, audit_id: str) -> None:
        report = self.report
        report.digests += 1
        inputs = data.get("inputs") or {}
        verdict = self._check(str(inputs.get("key_id")), digest_payload(data),
                              str(inputs.get("signature")))
        if verdict is None:
            self.problem(entry, seq, audit_id, f"no public key with id {inputs.get('key_id')} "
                         "to check this digest (pass --public-key)")
            return
        since = self._last_digest + 1 if self._last_digest is not None else report.first_seq
        if not verdict:
            self.problem(entry, seq, audit_id, "digest signature does not verify: entries "
                         f"{since}..{seq - 1} were rewritten after they were sealed")
            return
        if self._last_digest is not None and inputs.get("first_seq") != self._last_digest + 1:
            self.problem(entry, seq, audit_id, f"digest says its records start at seq "
                         f"{inputs.get('first_seq')}; the previous digest is seq "
                         f"{self._last_digest}")
        self._last_digest = seq
        report.sealed_through, report.unsealed = seq, 0


def verify_chain(
    entries: Iterable[Entry], check: SignatureCheck, *, from_start: bool = True
) -> dict[int, ChainReport]:
    """Verify every partition's chain; entries of a partition must come in offset order."""
    walkers: dict[int, _Walker] = {}
    for entry in entries:
        walker = walkers.get(entry.partition)
        if walker is None:
            walker = walkers[entry.partition] = _Walker(entry.partition, check, from_start)
        walker.walk(entry)
    return {p: w.report for p, w in sorted(walkers.items())}


def raw_gaps(sealed: Iterable[int], low: int, high: int) -> list[tuple[int, int]]:
    """Ranges [a, b] of raw offsets in [low, high) that no sealed entry covers."""
    covered = sorted({o for o in sealed if low <= o < high})
    gaps, nxt = [], low
    for offset in covered:
        if offset > nxt:
            gaps.append((nxt, offset - 1))
        nxt = offset + 1
    if nxt < high:
        gaps.append((nxt, high - 1))
    return gaps
