"""A tenant's audit export: other tenants' entries withheld as chain links, the cut verifiable."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.adapters.audit.keys import AuditKeys, key_id, signature_check
from broker.adapters.audit.sealer import tenant_entries
from broker.adapters.kafka.codec import Encoded
from broker.audit.chain import Position, canonical, is_digest, seal_digest, seal_record, withheld
from broker.audit.verify import Entry, verify_chain
from schemas.events import AuditRecord

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
PRIVATE = Ed25519PrivateKey.generate()
KEYS = AuditKeys(b"k" * 32, PRIVATE, key_id(PRIVATE.public_key()))
CHECK = signature_check({KEYS.key_id: PRIVATE.public_key()})


def chain(n: int, digest_every: int = 4) -> list[Entry]:
    """n decisions of one agent with a signed digest after every ``digest_every``, as sealed."""
    pos, since, out = Position(0), 0, []
    for i in range(n):
        record = AuditRecord(audit_id=f"audit-{i}", kind="escalation.decided",
                             agent_id="agent-1", occurred_at=NOW + timedelta(seconds=i),
                             subject_id=f"req-{i}", outcome="granted" if i % 2 else "denied",
                             reasons=(f"reason {i}",))
        sealed, value = seal_record(record, pos, raw_offset=i, sealed_at=NOW)
        out.append(Entry(0, len(out), value))
        pos = Position(0, pos.seq + 1, sealed.chain.hash if sealed.chain else "")
        if (i + 1) % digest_every == 0:
            digest, value = seal_digest(pos, first_seq=since, signed_at=NOW,
                                        key_id=KEYS.key_id, sign=KEYS.sign)
            out.append(Entry(0, len(out), value))
            pos = Position(0, pos.seq + 1, digest.chain.hash if digest.chain else "")
            since = pos.seq
    return out


def tenant_cut(entries: list[Entry], shown: set[int]) -> list[Entry]:
    """The export of ``entries`` showing records of sequence ``shown`` (and every digest) in
    full, the others as their chain link, as ``audit export --tenant`` writes them."""
    out = []
    for e in entries:
        data: dict[str, Any] = json.loads(e.value or b"null")
        if not (is_digest(data) or data["chain"]["seq"] in shown):
            data = withheld(data)
        out.append(Entry(e.partition, e.offset, data=data))
    return out


def problems(entries: list[Entry]) -> list[str]:
    return [str(p) for r in verify_chain(entries, CHECK).values() for p in r.problems]


def test_a_tenant_cut_verifies_and_shows_nothing_of_a_withheld_entry() -> None:
    """Withheld entries keep only partition, seq, prev_hash and hash; the cut verifies whole."""
    cut = tenant_cut(chain(10), shown={0, 3, 7})
    report = verify_chain(cut, CHECK)[0]
    assert report.problems == [] and report.entries == 12 and report.digests == 2
    stubs = [e.data for e in cut if e.data and e.data.get("withheld")]
    assert len(stubs) == 7
    assert all(set(s) == {"withheld", "chain"}
               and set(s["chain"]) == {"partition", "seq", "prev_hash", "hash"} for s in stubs)
    assert "agent-1" not in json.dumps(stubs)


def test_a_dropped_withheld_entry_is_named_as_missing() -> None:
    """Leaving an entry out (withheld or not) is a seq gap, as in a full export."""
    cut = tenant_cut(chain(10), shown={0, 3, 7})
    del cut[2]
    found = problems(cut)
    assert any("seq 2 missing" in p for p in found), found


def test_a_shown_entry_altered_in_the_cut_is_named() -> None:
    """An entry shown in full still hashes to its link: an edit is named."""
    cut = tenant_cut(chain(10), shown={3})
    data = cut[3].data
    assert data is not None
    cut[3] = Entry(0, 3, data={**data, "outcome": "granted" if data["outcome"] == "denied"
                               else "denied"})
    found = problems(cut)
    assert len(found) == 1 and "altered" in found[0], found


def test_a_withheld_stub_carrying_content_or_a_forged_link_fails() -> None:
    """A stub is its link only; a stub whose hash was replaced breaks the next link."""
    cut = tenant_cut(chain(10), shown=set())
    stub = cut[1].data
    assert stub is not None
    cut[1] = Entry(0, 1, data={**stub, "agent_id": "agent-1"})
    assert any("chain link only" in p for p in problems(cut))
    cut = tenant_cut(chain(10), shown=set())
    forged = {**stub, "chain": {**stub["chain"], "hash": "f" * 64}}
    cut[1] = Entry(0, 1, data=forged)
    assert any("prev_hash does not match" in p for p in problems(cut))


def test_the_sealers_tenant_copy_holds_its_agents_entries_and_verifies_as_the_chain() -> None:
    """What the sealer writes to acme's copy of a chain of acme's, globex's and broker-wide
    entries: acme's and the digests as written to the audit, the others as signed chain links
    naming no one; read back as a topic, the copy verifies with the audit's digests."""
    pos, since = Position(0), 0
    sealed: list[AuditRecord] = []
    for i, agent in enumerate(["acme:a", "globex:a", None, "acme:b", "globex:a", "acme:a"]):
        record = AuditRecord(audit_id=f"audit-{i}", kind="escalation.decided", agent_id=agent,
                             occurred_at=NOW, subject_id=f"req-{i}", outcome="granted")
        entry, _value = seal_record(record, pos, raw_offset=i, sealed_at=NOW)
        sealed.append(entry)
        pos = Position(0, pos.seq + 1, entry.chain.hash if entry.chain else "")
        if i in (2, 5):
            digest, _value = seal_digest(pos, first_seq=since, signed_at=NOW,
                                         key_id=KEYS.key_id, sign=KEYS.sign)
            sealed.append(digest)
            pos, since = Position(0, pos.seq + 1, digest.chain.hash if digest.chain else ""), \
                pos.seq + 1
    written = [Encoded(key=(e.agent_id or "").encode() or None, value=canonical(
        e.model_dump(mode="json")), headers=[]) for e in sealed]
    signed_withheld: list[Encoded] = []

    def sign(m: Encoded) -> Encoded:
        signed_withheld.append(m)
        return m

    copies = tenant_entries({"acme": "permbroker.tenant.acme.audit"}, sealed, written, sign)
    assert {topic for topic, _ in copies} == {"permbroker.tenant.acme.audit"}
    assert len(copies) == len(sealed)
    values = [m.value for _, m in copies]
    kept = [v for v, w in zip(values, written, strict=True) if v == w.value]
    assert len(kept) == 5  # acme:a, acme:b, acme:a and the two digests
    assert len(signed_withheld) == 3 and all(m.key is None for m in signed_withheld)
    assert b"globex" not in b"".join(values)
    report = verify_chain([Entry(0, i, v) for i, v in enumerate(values)], CHECK)[0]
    assert report.problems == [] and report.digests == 2 and report.entries == 8
