"""Two workers in one group on the session services: a rebalance mid-burst, and a stalled worker
(SIGSTOP past the session timeout, SIGCONT) that must write nothing once its partitions moved."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import redis

from broker.adapters.kafka.bus import Publisher, Record
from broker.adapters.redis import keyspace as keys
from broker.audit.records import ATTEMPT_FENCED
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord
from tests.support.factories import fraud_request
from tests.support.faults.helpers import Ledger, worker_counters
from tests.support.faults.ports import BASE
from tests.support.faults.report import Figures
from tests.support.faults.workers import (
    LEDGER_POLL_S,
    Epochs,
    claims,
    escalation_epochs,
    exited,
    pause,
    resume,
    second_worker,
    source_of,
    written_by,
)
from tests.support.taps import Tap
from tests.support.waits import wait_until

TapFactory = Callable[[str], Tap]


@pytest.fixture
def worker_2(settings: Settings, worker: WorkerProcess) -> Iterator[WorkerProcess]:
    """A second worker of the session worker's group (not started; stopped afterwards)."""
    other = second_worker(settings, BASE + 2, "worker-2")
    yield other
    other.stop()


@pytest.mark.criterion("2")
@pytest.mark.timeout(1200)
def test_rebalance_adding_and_removing_a_worker_mid_burst_of_10000(
    worker: WorkerProcess, worker_2: WorkerProcess, settings: Settings, publisher: Publisher,
    tap: TapFactory, agents: Callable[[str], str], figures: Figures,
) -> None:
    """A second worker joins at ~20% and leaves at ~60% of 10,000: 0 lost, 0 duplicates."""
    pool = [agents("b") for _ in range(60)]
    requests = [fraud_request(pool[i % len(pool)]) for i in range(10_000)]
    ledger = Ledger((r.request_id for r in requests), tap(topics.DECISIONS.name),
                    tap(topics.GRANTS.name))
    publisher.publish_many(topics.ESCALATIONS.name, requests, timeout=180)
    wait_until(lambda: len(ledger.decided()) >= 2000, 600, "2,000 decisions before the join",
               every=LEDGER_POLL_S)
    worker_2.start()
    worker_2.wait_ready(180)
    at_join = len(ledger.decided())
    wait_until(lambda: len(ledger.decided()) >= 6000, 600, "6,000 decisions before the leave",
               every=LEDGER_POLL_S)
    joined = claims(worker_2)
    by_second = sum(v for k, v in worker_counters(BASE + 2).items() if k.startswith("decided_"))
    worker_2.stop()
    at_leave = len(ledger.decided())
    started = time.monotonic()
    wait_until(lambda: ledger.decided() == ledger.wanted, 600, "every request decided",
               every=LEDGER_POLL_S)
    drain_s = time.monotonic() - started
    conflicting, two_grants, changed = ledger.conflicts()
    granted = {d.request_id for d in ledger.decisions() if d.outcome == "granted"}
    figures.check("decided when the 2nd worker joined / left", f"{at_join:,} / {at_leave:,}",
                  "join < leave < 10,000", at_join < at_leave < 10_000)
    figures.at_least("escalation partitions the 2nd worker claimed",
                     len(escalation_epochs(joined[-1])) if joined else 0, 1)
    figures.at_least("requests the 2nd worker decided", by_second, 1)
    figures.equal("lost decisions", len(ledger.wanted - ledger.decided()), 0)
    figures.equal("requests with two different decisions", conflicting, 0)
    figures.equal("requests with two distinct grants", two_grants, 0)
    figures.equal("grants announced with different contents", changed, 0)
    figures.equal("requests granted (policy grants all)", len(granted), 10_000)
    figures.at_most("rest of the burst decided after the leave (no hang)", round(drain_s), 600,
                    " s")
    figures.check("identical grant re-announcements (at-least-once)", ledger.reannounced(),
                  "any; same id", True)
    figures.verify()


def _fences(client: redis.Redis, partitions: Epochs) -> Epochs:
    """The current fence epoch in Redis of each partition."""
    return {tp: int(client.get(keys.fence(*tp)) or 0) for tp in partitions}


def _stale_writes(records: list[Record], lost: Epochs, moved: Epochs,
                  reclaimed: Epochs) -> list[Record]:
    """Records on a lost partition appended after the fence moved and before any re-claim.

    Epochs are Redis's clock in microseconds at the claim (broker/adapters/redis/lua.py CLAIM); a
    record's timestamp is Kafka's append time in ms on the same machine. Decisions and grants are
    keyed by agent like the requests, so they land on the partition number the request came from.
    """
    out = []
    for r in records:
        tp = (topics.ESCALATIONS.name, r.partition)
        if tp not in lost:
            continue
        after_move = r.timestamp_ms * 1000 > moved[tp]
        before_reclaim = tp not in reclaimed or r.timestamp_ms * 1000 < reclaimed[tp]
        if after_move and before_reclaim:
            out.append(r)
    return out


def _decided_us(record: Record) -> int | None:
    """When the worker decided what a decision or grant event says (Redis's clock), in us."""
    event = record.event
    at = getattr(event, "decided_at", None) or getattr(event, "issued_at", None)
    return int(at.timestamp() * 1_000_000) if at is not None else None


def _split_late(stale: list[Record], moved: Epochs, ours: list[Epochs], theirs: list[Epochs]
                ) -> tuple[list[Record], list[Record], list[Record]]:
    """(decided after the fence moved, decided before it but appended late, decided under a
    claim the stalled worker made again since).

    A record handed to the (non-transactional) producer before the SIGSTOP is appended when the
    process resumes: it carries a decision committed under the old epoch before the move (the
    commit script refuses a stale epoch), with the same ids the new owner announces. Only a
    decision *made* after the move, while the partition's newest claim was not the stalled
    worker's, breaks fencing; one made once it had claimed the partition again (``ours``, every
    claim it logged; ``theirs``, the other worker's) is its own.
    """
    made_after, delivered_late, reclaimed = [], [], []
    for r in stale:
        at = _decided_us(r)
        tp = (topics.ESCALATIONS.name, r.partition)
        if at is not None and at <= moved[tp]:
            delivered_late.append(r)
        elif at is not None and _owner_at(tp, at, ours, theirs) == "ours":
            reclaimed.append(r)
        else:
            made_after.append(r)
    return made_after, delivered_late, reclaimed


def _owner_at(tp: tuple[str, int], at_us: int, ours: list[Epochs], theirs: list[Epochs]
              ) -> str | None:
    """Whose claim on ``tp`` was the newest at ``at_us`` (epochs are Redis's clock in us)."""
    made = [(c[tp], who) for who, logged in (("ours", ours), ("theirs", theirs))
            for c in logged if tp in c and c[tp] <= at_us]
    return max(made)[1] if made else None


def _stale_attempts(records: list[Record], lost: Epochs, moved: Epochs) -> list[Record]:
    """Audit records of decision attempts stamped with a lost epoch, appended after its move."""
    partition_of = {epoch: tp for tp, epoch in lost.items()}
    out = []
    for r in records:
        if not isinstance(r.event, AuditRecord) or r.event.kind != "escalation.decided":
            continue
        epoch = r.event.inputs.get("fence_epoch")
        tp = partition_of.get(epoch) if isinstance(epoch, int) else None
        if tp is not None and r.timestamp_ms * 1000 > moved[tp]:
            out.append(r)
    return out


def _start_sharing(worker: WorkerProcess, worker_2: WorkerProcess) -> None:
    """Start the second worker and wait until both own escalation partitions."""
    worker_2.start()
    worker_2.wait_ready(180)
    wait_until(lambda: bool(claims(worker)) and escalation_epochs(claims(worker)[-1]) != {}
               and bool(claims(worker_2)), 120, "both workers own escalation partitions",
               every=LEDGER_POLL_S)


def _stall_until_taken_over(worker: WorkerProcess, rclient: redis.Redis, ledger: Ledger,
                            lost: Epochs) -> tuple[Epochs, float]:
    """SIGSTOP the worker until the other one claimed its partitions and decided 200 more.

    Returns the fences after the move and the seconds the takeover took; resumes the worker.
    """
    pause(worker)
    stopped_at = time.monotonic()
    try:
        wait_until(lambda: all(e > lost[tp] for tp, e in _fences(rclient, lost).items()),
                   120, "the other worker claimed the stalled worker's partitions",
                   every=LEDGER_POLL_S)
        moved = _fences(rclient, lost)
        took_over_s = time.monotonic() - stopped_at
        progress = len(ledger.decided())
        wait_until(lambda: len(ledger.decided()) >= progress + 200, 300,
                   "the other worker decides while the stalled one is stopped", every=LEDGER_POLL_S)
    finally:
        resume(worker)
    return moved, took_over_s


def _unvoided(audit: list[Record], attempts: list[Record]) -> list[Record]:
    """Attempt audits no escalation.attempt_fenced record of the same worker voided."""
    voided = {r.event.inputs.get("voided_audit_id") for r in audit
              if isinstance(r.event, AuditRecord) and r.event.kind == ATTEMPT_FENCED}
    return [a for a in attempts
            if isinstance(a.event, AuditRecord) and a.event.audit_id not in voided]


@pytest.mark.criterion("3")
@pytest.mark.timeout(900)
def test_stalled_worker_writes_nothing_after_losing_its_partitions(
    worker: WorkerProcess, worker_2: WorkerProcess, settings: Settings, publisher: Publisher,
    tap: TapFactory, rclient: redis.Redis, agents: Callable[[str], str], figures: Figures,
) -> None:
    """SIGSTOP past the session timeout: the other worker takes over, the stalled one is fenced."""
    _start_sharing(worker, worker_2)
    pool = [agents("b") for _ in range(60)]
    requests = [fraud_request(pool[i % len(pool)]) for i in range(3000)]
    decisions, grants = tap(topics.DECISIONS.name), tap(topics.GRANTS.name)
    audit = tap(topics.AUDIT_RAW.name)
    ledger = Ledger((r.request_id for r in requests), decisions, grants)
    publisher.publish_many(topics.ESCALATIONS.name, requests, timeout=120)
    wait_until(lambda: len(ledger.decided()) >= 800, 300, "800 decisions before the stall",
               every=LEDGER_POLL_S)
    lost = escalation_epochs(claims(worker)[-1])
    stalled_source = source_of(worker)
    fenced_before = worker_counters(settings.metrics_port).get("fenced", 0)
    moved, took_over_s = _stall_until_taken_over(worker, rclient, ledger, lost)
    wait_until(lambda: ledger.decided() == ledger.wanted, 400, "every request decided",
               every=LEDGER_POLL_S)
    wait_until(lambda: exited(worker) or len(claims(worker)) > 1, 120,
               "the stalled worker rejoined (a new claim) or exited", every=LEDGER_POLL_S)
    reclaimed = escalation_epochs(claims(worker)[-1]) if not exited(worker) else {}
    # The product's count of refusals: its metric while it runs, else the lines it logged.
    refused = (worker_counters(settings.metrics_port).get("fenced", 0) - fenced_before
               if not exited(worker) else worker.log_text().count("fenced, writing nothing"))
    stale = _stale_writes(written_by([*decisions.records, *grants.records], stalled_source),
                          lost, moved, reclaimed)
    its_audit = written_by(audit.records, stalled_source)
    attempts = _stale_attempts(its_audit, lost, moved)
    conflicting, two_grants, _changed = ledger.conflicts()
    figures.at_least("stalled worker's escalation partitions", len(lost), 1)
    figures.at_most("other worker took them over after SIGSTOP", round(took_over_s), 60, " s")
    figures.equal("partitions whose fence moved past the stalled epoch",
                  sum(moved[tp] > lost[tp] for tp in lost), len(lost))
    made_after, delivered_late, own = _split_late(stale, moved, claims(worker), claims(worker_2))
    figures.equal("decisions/grants the stalled worker made after its fence moved",
                  len(made_after), 0)
    figures.check("of its records appended after the move: decided under a claim it made again "
                  "since", len(own), "any; its own partition then", True)
    figures.check("of its records appended after the move: decided before it (buffered before "
                  "SIGSTOP)", len(delivered_late), "any; same ids, no conflict", True)
    figures.check("attempt audits stamped with its old epoch, appended after the move",
                  len(attempts), "any; each voided", True)
    figures.equal("of them not voided (escalation.attempt_fenced)",
                  len(_unvoided(its_audit, attempts)), 0)
    # Refusals happen only if the stalled worker still held work for a lost partition when it
    # resumed (19, 1, 68 and 0 in four runs); the assertions above hold either way.
    figures.check("fenced refusals the stalled worker counted", refused,
                  "any (0: nothing in flight at SIGSTOP)", True)
    figures.check("stalled worker afterwards", "exited" if exited(worker) else
                  f"rejoined, {len(reclaimed)} partition(s)",
                  "rejoined with newer epochs, or exited",
                  exited(worker) or all(e > max(moved.values()) for e in reclaimed.values()))
    figures.equal("lost decisions", len(ledger.wanted - ledger.decided()), 0)
    figures.equal("requests with two different decisions", conflicting, 0)
    figures.equal("requests with two distinct grants", two_grants, 0)
    figures.verify()
