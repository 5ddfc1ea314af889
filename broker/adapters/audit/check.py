"""Verifying the audit: chains of the sealed topic (or a copy, or an export) and raw coverage.

Imports broker.audit.chain, broker.adapters (audit_keys, audit_log), broker.config, schemas.
Blocking (confluent-kafka). ``verify`` returns a report; the CLI prints it and sets the exit code.

Raw coverage (live topic only): every offset of ``permbroker.audit.raw`` must be sealed exactly
once. Offsets past the last sealed one are the sealer's lag, not a break; an unsealed offset
*below* it is a record that was lost between the raw topic and the chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from broker.adapters.audit.keys import PUBLIC_FILE, key_dir, load_public_keys, signature_check
from broker.adapters.audit.log import Stored, read_jsonl, read_topic, watermarks
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.edge import Trust
from broker.audit.verify import ChainReport, Entry, Problem, raw_gaps, verify_chain
from broker.config import Settings
from schemas import topics


@dataclass
class Verification:
    """Chains by partition, raw coverage, and every problem found (first per cause)."""

    source: str
    chains: dict[int, ChainReport] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    lag: dict[int, int] = field(default_factory=dict)  # raw records not sealed yet
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unsealed(self) -> int:
        """Entries not yet covered by a signed digest, plus raw records not yet chained."""
        return sum(c.unsealed for c in self.chains.values()) + sum(self.lag.values())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "ok": self.ok, "source": self.source, "problems": self.problems,
            "notes": self.notes, "raw_lag": self.lag,
            "partitions": [
                {"partition": c.partition, "entries": c.entries, "first_seq": c.first_seq,
                 "last_seq": c.last_seq, "digests": c.digests, "sealed_through": c.sealed_through,
                 "unsealed": c.unsealed, "problems": [str(p) for p in c.problems]}
                for c in self.chains.values()
            ],
        }


def public_key_files(settings: Settings, given: Iterable[Path]) -> list[Path]:
    """The public keys to check digests with: those given, else the configured one."""
    return list(given) or [key_dir(settings) / PUBLIC_FILE]


def verify(
    stored: Iterable[Stored], keys: list[Path], *, source: str, from_start: bool = True,
    complete: bool = False,
) -> Verification:
    """Verify the chains of these entries with these public keys."""
    check = signature_check(load_public_keys(keys))
    result = Verification(source)
    unsigned: list[int] = []

    def entries() -> Iterator[Entry]:
        for s in stored:
            if s.refusal is not None and s.refusal.startswith("unsigned"):
                unsigned.append(1)  # older than record signatures: the chain still covers it
            elif s.refusal is not None:
                result.problems.append(f"partition {s.entry.partition} offset "
                                       f"{s.entry.offset}: not signed by the broker "
                                       f"({s.refusal[:200]})")
            yield s.entry

    result.chains = verify_chain(entries(), check, from_start=from_start)
    if unsigned:
        result.notes.append(f"{len(unsigned)} entr(y/ies) carry no broker signature (written "
                            "before records were signed); the hash chain and digests cover them")
    for chain in result.chains.values():
        result.problems += [str(p) for p in chain.problems]
        result.notes += chain.notes
        if complete and chain.unsealed:
            first = (chain.last_seq or 0) - chain.unsealed + 1
            result.problems.append(str(Problem(
                chain.partition, -1, first, "", f"{chain.unsealed} entries from seq {first} on "
                "are not sealed by a signed digest yet")))
    return result


def verify_topic(kafka: KafkaAccess, keys: list[Path], *, topic: str = topics.AUDIT.name,
                 complete: bool = False, trust: Trust | None = None) -> Verification:
    """Verify a topic's chains (and, given a trust, each entry's broker signature); for the
    live audit topic, also its raw coverage."""
    marks = watermarks(kafka, topic)
    # A tenant's copy starts where the chain was when the tenant was declared.
    copy = topics.tenant_of_topic(topic) is not None
    from_start = {p: low == 0 and not copy for p, (low, _high) in marks.items()}
    # The raw topic as of now: what is appended while the chain is read (and each entry's
    # signature checked) is the next verification's, not lag of this one.
    raw = watermarks(kafka, topics.AUDIT_RAW.name) if topic == topics.AUDIT.name else {}
    result = verify(read_topic(kafka, topic, trust=trust), keys, source=f"topic {topic}",
                    from_start=all(from_start.values()), complete=complete)
    if topic == topics.AUDIT.name:
        _raw_coverage(raw, result, complete)
    return result


def verify_file(path: Path, keys: list[Path], *, complete: bool = False) -> Verification:
    """Verify an export written by ``permbroker audit export --format jsonl``."""
    return verify(read_jsonl(path), keys, source=f"file {path}", from_start=complete,
                  complete=complete)


def _raw_coverage(raw: dict[int, tuple[int, int]], result: Verification,
                  complete: bool) -> None:
    for partition, (low, high) in raw.items():
        chain = result.chains.get(partition)
        sealed = chain.raw_offsets if chain else []
        top = max(sealed, default=low - 1)
        for first, last in raw_gaps(sealed, low, top + 1):
            result.problems.append(f"partition {partition}: raw audit offsets {first}..{last} "
                                   "were never sealed into the chain (lost)")
        if high - 1 > top:
            result.lag[partition] = high - 1 - top
            if complete:
                result.problems.append(f"partition {partition}: {high - 1 - top} raw audit "
                                       "record(s) not sealed yet (sealer lag)")


def wait_sealed(kafka: KafkaAccess, keys: list[Path], timeout: float, *,
                topic: str = topics.AUDIT.name, trust: Trust | None = None) -> Verification:
    """Verify once every raw record is chained and signed (waiting up to ``timeout``).

    Returns at once when the chain is broken; an unsealed tail left at the deadline is reported
    as a problem.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = verify_topic(kafka, keys, topic=topic, trust=trust)
        if not result.ok or result.unsealed == 0:
            return result
        if time.monotonic() >= deadline:
            return verify_topic(kafka, keys, topic=topic, complete=True, trust=trust)
        time.sleep(0.5)
