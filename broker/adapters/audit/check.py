"""Verifying the audit: chains of the sealed topic (or a copy, or an export) and raw coverage.

Imports broker.audit.chain, broker.adapters (audit_keys, audit_log), broker.config, schemas.
Blocking (confluent-kafka). ``verify`` returns a report; the CLI prints it and sets the exit code.

Raw coverage (live topic only): every offset of ``permbroker.audit.raw`` must be sealed exactly
once. Offsets past the last sealed one are the sealer's lag, not a break; an unsealed offset
*below* it is a record that was lost between the raw topic and the chain.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from broker.adapters.audit.keys import PUBLIC_FILE, key_dir, load_public_keys, signature_check
from broker.adapters.audit.log import Stored, read_jsonl, read_topic, watermarks
from broker.adapters.kafka.access import KafkaAccess
from broker.audit.verify import ChainReport, Problem, raw_gaps, verify_chain
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
    result.chains = verify_chain((s.entry for s in stored), check, from_start=from_start)
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
                 complete: bool = False) -> Verification:
    """Verify a topic's chains; for the live audit topic, also its raw coverage."""
    marks = watermarks(kafka, topic)
    from_start = {p: low == 0 for p, (low, _high) in marks.items()}
    result = verify(read_topic(kafka, topic), keys, source=f"topic {topic}",
                    from_start=all(from_start.values()), complete=complete)
    if topic == topics.AUDIT.name:
        _raw_coverage(kafka, result, complete)
    return result


def verify_file(path: Path, keys: list[Path], *, complete: bool = False) -> Verification:
    """Verify an export written by ``permbroker audit export --format jsonl``."""
    return verify(read_jsonl(path), keys, source=f"file {path}", from_start=complete,
                  complete=complete)


def _raw_coverage(kafka: KafkaAccess, result: Verification, complete: bool) -> None:
    for partition, (low, high) in watermarks(kafka, topics.AUDIT_RAW.name).items():
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


def wait_sealed(kafka: KafkaAccess, keys: list[Path], timeout: float) -> Verification:
    """Verify once every raw record is chained and signed (waiting up to ``timeout``).

    Returns at once when the chain is broken; an unsealed tail left at the deadline is reported
    as a problem.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = verify_topic(kafka, keys)
        if not result.ok or result.unsealed == 0:
            return result
        if time.monotonic() >= deadline:
            return verify_topic(kafka, keys, complete=True)
        time.sleep(0.5)
