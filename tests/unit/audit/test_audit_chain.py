"""The audit hash chain: sealing, digests, and a verifier naming the entry that broke it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.adapters.audit.keys import AuditKeys, key_id, signature_check
from broker.audit.chain import GENESIS, Position, canonical, entry_hash, seal_digest, seal_record
from broker.audit.verify import Entry, raw_gaps, verify_chain
from schemas.events import AuditRecord

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
PRIVATE = Ed25519PrivateKey.generate()
KEYS = AuditKeys(b"k" * 32, PRIVATE, key_id(PRIVATE.public_key()))
CHECK = signature_check({KEYS.key_id: PRIVATE.public_key()})


def record(n: int) -> AuditRecord:
    return AuditRecord(audit_id=f"audit-{n}", kind="escalation.decided", agent_id="agent-1",
                       occurred_at=NOW + timedelta(seconds=n), subject_id=f"req-{n}",
                       outcome="granted" if n % 2 else "denied", reasons=(f"reason {n}",),
                       inputs={"request": {"confidence": 0.95, "n": n}})


def chain(n: int, digest_every: int = 4, partition: int = 0) -> list[Entry]:
    """n records with a digest after every ``digest_every`` entries, as the sealer writes them."""
    pos, since, out = Position(partition), 0, []
    for i in range(n):
        sealed, value = seal_record(record(i), pos, raw_offset=i, sealed_at=NOW)
        out.append(Entry(partition, len(out), value))
        pos = Position(partition, pos.seq + 1, sealed.chain.hash if sealed.chain else GENESIS)
        if (i + 1) % digest_every == 0:
            digest, value = seal_digest(pos, first_seq=since, signed_at=NOW, key_id=KEYS.key_id,
                                        sign=KEYS.sign)
            out.append(Entry(partition, len(out), value))
            pos = Position(partition, pos.seq + 1, digest.chain.hash if digest.chain else "")
            since = pos.seq
    return out


def problems(entries: list[Entry], **kw: bool) -> list[str]:
    return [str(p) for r in verify_chain(entries, CHECK, **kw).values() for p in r.problems]


def renumber(entries: list[Entry]) -> list[Entry]:
    """The entries at consecutive offsets, as a copy of the topic would hold them."""
    return [Entry(e.partition, i, e.value, e.data) for i, e in enumerate(entries)]


def test_a_sealed_chain_verifies_and_every_digest_is_counted() -> None:
    """Records and signed digests as the sealer writes them verify cleanly."""
    entries = chain(10)
    report = verify_chain(entries, CHECK)[0]
    assert report.problems == [] and report.entries == 12 and report.digests == 2
    assert report.sealed_through == 9 and report.unsealed == 2  # digests take seq 4 and 9
    assert report.raw_offsets == list(range(10))


def test_stored_bytes_are_canonical_and_the_hash_covers_the_position() -> None:
    """The value is canonical JSON; changing seq or prev_hash changes the hash."""
    value = chain(1)[0].value or b""
    data = json.loads(value)
    assert canonical(data) == value
    assert entry_hash(data) == data["chain"]["hash"]
    moved = {**data, "chain": {**data["chain"], "seq": 7}}
    assert entry_hash(moved) != data["chain"]["hash"]


def test_an_altered_byte_is_named() -> None:
    """Flipping one record's outcome breaks exactly that record."""
    entries = chain(10)
    value = entries[5].value or b""
    entries[5] = Entry(0, 5, value.replace(b'"outcome":"denied"', b'"outcome":"grantd"'))
    found = problems(entries)
    assert len(found) == 1 and "offset 5 (seq 5, audit-4)" in found[0]
    assert "altered" in found[0]


def test_non_canonical_bytes_are_named_even_when_the_content_is_the_same() -> None:
    """Whitespace added to a stored value is a change of bytes, reported at that entry."""
    entries = chain(3)
    entries[1] = Entry(0, 1, (entries[1].value or b"").replace(b",", b", ", 1))
    found = problems(entries)
    assert len(found) == 1 and "offset 1 (seq 1" in found[0] and "canonical" in found[0]


def test_a_deleted_record_is_named_as_missing() -> None:
    """Removing seq 1 reports seq 1 missing, once, at the entry that follows it."""
    entries = renumber([e for i, e in enumerate(chain(10)) if i != 1])
    found = problems(entries)
    assert found == ["partition 0 offset 1 (seq 2, audit-2): seq 1 missing before this entry "
                     "(deleted)"]


def test_two_swapped_records_are_both_named() -> None:
    """Swapping seq 6 and 7 names both as out of order, and nothing else."""
    entries = chain(10)
    entries[6], entries[7] = entries[7], entries[6]
    found = problems(renumber(entries))
    assert len(found) == 2 and all("out of order" in p for p in found)
    assert found[0].startswith("partition 0 offset 6 (seq 7, audit-6)") and "seq 6" in found[0]
    assert found[1].startswith("partition 0 offset 7 (seq 6, audit-5)")


def test_a_rehashed_record_breaks_the_next_link() -> None:
    """An entry altered and re-hashed is caught by the next entry's prev_hash."""
    entries = chain(10)
    data = json.loads(entries[2].value or b"")
    data["outcome"] = "granted"
    data["chain"]["hash"] = entry_hash(data)
    entries[2] = Entry(0, 2, canonical(data))
    found = problems(entries)
    assert len(found) == 1 and "seq 3" in found[0] and "hash of seq 2 (offset 2)" in found[0]


def test_a_consistent_rewrite_fails_the_next_digest_signature() -> None:
    """Re-hashing every entry after a change still fails the signed digest that covers it."""
    entries = chain(8)
    rewritten, prev = [], GENESIS
    for e in entries:
        data = json.loads(e.value or b"")
        if data["audit_id"] == "audit-1":
            data["outcome"] = "revoked"
        data["chain"]["prev_hash"] = prev
        data["chain"]["hash"] = prev = entry_hash(data)
        rewritten.append(Entry(0, e.offset, canonical(data)))
    found = problems(rewritten)
    assert len(found) == 2 and all("signature does not verify" in p for p in found)
    assert "entries 0..3" in found[0]


def test_a_digest_signed_by_an_unknown_key_is_reported() -> None:
    """Without the signer's public key, a digest cannot vouch for anything."""
    found = [str(p) for r in verify_chain(chain(4), lambda *_a: None).values()
             for p in r.problems]
    assert len(found) == 1 and "no public key" in found[0]


def test_a_chain_that_does_not_start_at_zero() -> None:
    """A missing head fails a full verification and is a note for a partial one."""
    entries = renumber(chain(6)[2:])
    assert "seq 0..1 missing" in problems(entries, from_start=True)[0]
    report = verify_chain(entries, CHECK, from_start=False)[0]
    assert report.problems == [] and "starts at seq 2" in report.notes[0]


def test_entries_from_an_export_verify_like_stored_bytes() -> None:
    """Parsed JSON (an export line) verifies with the same hashes."""
    entries = [Entry(e.partition, e.offset, data=json.loads(e.value or b"")) for e in chain(9)]
    assert problems(entries) == []
    entries[4] = Entry(0, 4, data={**(entries[4].data or {}), "subject_id": "req-x"})
    assert len(problems(entries)) == 1


@pytest.mark.parametrize(("sealed", "low", "high", "gaps"), [
    ([0, 1, 2], 0, 3, []),
    ([0, 2], 0, 3, [(1, 1)]),
    ([5, 6], 3, 8, [(3, 4), (7, 7)]),
    ([], 0, 2, [(0, 1)]),
])
def test_raw_gaps(sealed: list[int], low: int, high: int, gaps: list[tuple[int, int]]) -> None:
    """Raw offsets no entry covers are listed as ranges."""
    assert raw_gaps(sealed, low, high) == gaps
