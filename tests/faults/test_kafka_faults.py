"""Kafka faults: the single broker killed and restarted under load (private stack), and one
broker of a three-broker cluster (RF 3, min ISR 2) killed with -9 during a burst."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher, read_all
from broker.errors import BusError
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import EscalationDecided, EscalationRequested, GrantIssued
from tests.support.factories import fraud_request
from tests.support.faults import cluster, private
from tests.support.faults.helpers import Ledger
from tests.support.faults.report import Figures
from tests.support.faults.workers import LEDGER_POLL_S
from tests.support.taps import Tap
from tests.support.waits import wait_until


class Burst:
    """Publishes requests in chunks from a thread; remembers which ones Kafka acknowledged."""

    def __init__(self, publisher: Publisher, requests: list[EscalationRequested],
                 chunk: int = 100, deadline_s: float = 300,
                 fault: tuple[int, Callable[[], None]] | None = None) -> None:
        self.acked: set[str] = set()
        self.failures = 0
        self.acked_at_fault: int | None = None
        self._publisher, self._requests, self._chunk = publisher, requests, chunk
        self._fault = fault  # (after how many acked requests, what to do): a fault mid-burst
        self._deadline = time.monotonic() + deadline_s
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Burst:
        self._thread.start()
        return self

    def _run(self) -> None:
        for i in range(0, len(self._requests), self._chunk):
            batch = self._requests[i:i + self._chunk]
            while time.monotonic() < self._deadline:
                try:  # a chunk that failed is sent again: same request ids, decided once
                    self._publisher.publish_many(topics.ESCALATIONS.name, batch, timeout=30)
                except BusError:
                    self.failures += 1
                    continue
                self.acked.update(r.request_id for r in batch)
                break
            if self._fault and self.acked_at_fault is None and len(self.acked) >= self._fault[0]:
                self.acked_at_fault = len(self.acked)
                self._fault[1]()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the burst did not finish publishing in time"


def _logged(kafka: KafkaAccess, topic: str, kind: type, ids: set[str], attr: str) -> set[str]:
    """Ids (``attr``) of the events of one kind read back from the whole log of a topic."""
    out = set()
    for rec in read_all(kafka, topic, timeout=120):
        if isinstance(rec.event, kind) and getattr(rec.event, attr) in ids:
            out.add(getattr(rec.event, attr))
    return out


@pytest.mark.criterion("6")
@pytest.mark.timeout(900)
def test_kafka_restarted_under_load_every_acked_request_is_decided(
    test_policy: Path, run_id: str, tmp_path: Path, agents: Callable[[str], str],
    figures: Figures,
) -> None:
    """kill -9 the broker mid-burst, start it again: the same worker decides every acked one."""
    with private.private_services(test_policy, run_id, tmp_path / "w") as (settings, worker):
        pool = [agents("b") for _ in range(40)]
        private.register(settings, pool)
        publisher = private.publisher(settings, "/tests/kafka-restart")
        first = [fraud_request(pool[i % len(pool)]) for i in range(3000)]
        later = [fraud_request(pool[i % len(pool)]) for i in range(500)]
        admin = role_access(settings, topics.ADMIN)
        decisions = Tap(admin, topics.DECISIONS.name)
        grants = Tap(admin, topics.GRANTS.name)
        try:
            ledger = Ledger((r.request_id for r in [*first, *later]), decisions, grants)
            publisher.publish_many(topics.ESCALATIONS.name, first, timeout=120)
            wait_until(lambda: len(ledger.decided()) >= 600, 300, "600 decisions before the kill",
                       every=LEDGER_POLL_S)
            pid = worker.pid
            private.kill("kafka")
            at_kill = len(ledger.decided())
            private.restart()
            restarted = time.monotonic()
            burst = Burst(publisher, later).start()  # load goes on once the broker is back
            burst.join(300)
            acked = {r.request_id for r in first} | burst.acked
            wait_until(lambda: acked <= ledger.decided(), 400, "every acked request decided",
                       every=LEDGER_POLL_S)
            recovered_s = time.monotonic() - restarted
            conflicting, two_grants, changed = ledger.conflicts()
            figures.check("decided when Kafka was killed", f"{at_kill:,} of 3,000",
                          "< 3,000 (mid-burst)", at_kill < 3000)
            figures.equal("requests acked (before + after the restart)", len(acked), 3500)
            figures.equal("acked requests never decided", len(acked - ledger.decided()), 0)
            figures.equal("requests with two different decisions", conflicting, 0)
            figures.equal("requests with two distinct grants", two_grants, 0)
            figures.equal("grants announced with different contents", changed, 0)
            figures.check("worker recovered by itself (same process)", "yes" if worker.pid == pid
                          and worker.proc is not None and worker.proc.poll() is None else "no",
                          "yes", worker.pid == pid and worker.proc is not None
                          and worker.proc.poll() is None)
            figures.at_most("all acked decided after the restart", round(recovered_s), 400, " s")
        finally:
            decisions.close()
            grants.close()
    figures.verify()


@pytest.mark.criterion("7")
@pytest.mark.timeout(900)
def test_three_broker_cluster_loses_no_acked_request_or_grant_when_one_is_killed(
    test_policy: Path, run_id: str, tmp_path: Path, agents: Callable[[str], str],
    figures: Figures,
) -> None:
    """RF 3, min ISR 2, acks=all: kill -9 the busiest broker mid-burst; nothing acked is lost."""
    with cluster.cluster_services(test_policy, run_id, tmp_path / "w") as (settings, _worker):
        admin = role_access(settings, topics.ADMIN)
        watched = {topics.ESCALATIONS.name, topics.DECISIONS.name, topics.GRANTS.name}
        rf, isr = cluster.replication(watched)
        pool = [agents("b") for _ in range(40)]
        private.register(settings, pool)
        publisher = private.publisher(settings, "/tests/cluster")
        requests = [fraud_request(pool[i % len(pool)]) for i in range(3000)]
        decisions, grants = (Tap(admin, t.name) for t in (topics.DECISIONS, topics.GRANTS))
        try:
            ledger = Ledger((r.request_id for r in requests), decisions, grants)
            led = cluster.leaders(watched)
            victim = max(led, key=lambda n: led[n])
            at_kill: list[int] = []

            def kill() -> None:  # from the burst's thread, after 40 % of it was acked
                cluster.kill_node(victim)
                at_kill.append(len(ledger.decided()))

            burst = Burst(publisher, requests, fault=(1200, kill)).start()
            burst.join(300)
            wait_until(lambda: burst.acked <= ledger.decided(), 400, "every acked one decided",
                       every=LEDGER_POLL_S)
            granted = {d.grant_id for d in ledger.decisions() if d.grant_id is not None}
            in_log = _logged(admin, topics.ESCALATIONS.name, EscalationRequested,
                             burst.acked, "request_id")
            grants_in_log = _logged(admin, topics.GRANTS.name, GrantIssued, granted,
                                    "grant_id")
            decided_in_log = _logged(admin, topics.DECISIONS.name, EscalationDecided,
                                     burst.acked, "request_id")
            conflicting, two_grants, _changed = ledger.conflicts()
            figures.equal("replication factor of the request/decision/grant topics", rf, 3)
            figures.equal("in-sync replicas before the kill", isr, 3)
            figures.equal("min.insync.replicas of the grant topic",
                          cluster.min_insync(topics.GRANTS.name), 2)
            figures.at_least("partitions the killed broker led", led[victim], 1)
            figures.check("acked / decided when the broker was killed",
                          f"{burst.acked_at_fault or 0:,} / {at_kill[0] if at_kill else 0:,}",
                          "< 3,000 (mid-burst)",
                          bool(at_kill) and (burst.acked_at_fault or 3000) < 3000)
            figures.equal("requests acked", len(burst.acked), 3000)
            figures.equal("acked requests missing from the log", len(burst.acked - in_log), 0)
            figures.equal("acked requests never decided", len(burst.acked - ledger.decided()), 0)
            figures.equal("decisions missing from the log", len(burst.acked - decided_in_log), 0)
            figures.equal("granted decisions whose grant event is missing from the log",
                          len(granted - grants_in_log), 0)
            figures.equal("requests with two distinct grants", two_grants, 0)
            figures.equal("requests with two different decisions", conflicting, 0)
            figures.check("publish retries during the failover", burst.failures, "any", True)
        finally:
            decisions.close()
            grants.close()
    figures.verify()
