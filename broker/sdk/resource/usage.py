"""Check reports of an enforcement point: ``UsageReporter``. Imports adapters, sdk, schemas.

    reporter = UsageReporter.connect(kafka, service=load_service(settings, "payments-mcp"))
    view = ReportingChecker(grant_view, reporter)   # or McpGuard(..., reporter=reporter)

Every check the point answers (allowed or denied) is kept in memory and sent in the background,
in batches of one agent's checks (``checks.reported`` on ``permbroker.usage``, key = the agent,
signed with the point's own key), where workers audit each one: which agent did what, where,
under which grant. Recording never blocks a check and never fails it: at most ``max_pending``
checks wait, and a check recorded when that many wait is dropped and counted; the next report
says how many were dropped. ``close()`` sends what is left.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import defaultdict, deque
from datetime import UTC, datetime
from typing import Any

from broker.adapters.crypto.service_key import ServiceIdentity
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.delivery.consistency import ConsistencyToken
from broker.errors import BrokerError
from broker.sdk.resource.enforce import Checker
from broker.sdk.resource.index import Verdict
from schemas import topics
from schemas.events import CheckPerformed, ChecksReported
from schemas.events.usage import MAX_CHECKS_PER_REPORT

log = logging.getLogger("permbroker.usage")
Pending = tuple[str, CheckPerformed]  # (agent id, check)


class UsageReporter:
    """Batches an enforcement point's checks and reports them, off the checking thread."""

    def __init__(self, publisher: Publisher, *, service: ServiceIdentity,
                 max_pending: int = 10_000, interval_s: float = 1.0) -> None:
        self.service = service.name
        self._identity = service
        self._publisher = publisher
        self._pending: deque[Pending] = deque()
        self._max = max_pending
        self._lock = threading.Lock()
        self.dropped = 0  # dropped since the last report that said so
        self.dropped_total = 0
        self.sent = 0
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permbroker-usage", daemon=True)
        self._thread.start()

    @classmethod
    def connect(cls, kafka: KafkaAccess, *, service: ServiceIdentity,
                **options: Any) -> UsageReporter:
        """A reporter with its own Kafka producer."""
        return cls(Publisher(kafka, source=f"/services/{service.name}"), service=service,
                   **options)

    def record(self, agent_id: str, scope: str, resource: str, verdict: Verdict) -> None:
        """Keep one check to report (or count it dropped when the memory bound is reached)."""
        check = CheckPerformed(
            scope=scope, resource=resource[:256], allowed=verdict.allowed,
            grant_id=verdict.grant.grant_id if verdict.grant is not None else None,
            reason=verdict.reason[:512], checked_at=datetime.now(UTC))
        with self._lock:
            if len(self._pending) >= self._max:
                self.dropped += 1
                self.dropped_total += 1
                return
            self._pending.append((agent_id, check))

    def flush(self) -> int:
        """Send every waiting check now (one report per agent); how many were sent."""
        with self._lock:
            batch, self._pending = self._pending, deque()
            dropped, self.dropped = self.dropped, 0
        by_agent: dict[str, list[CheckPerformed]] = defaultdict(list)
        for agent_id, check in batch:
            by_agent[agent_id].append(check)
        sent = 0
        for agent_id, checks in by_agent.items():
            for start in range(0, len(checks), MAX_CHECKS_PER_REPORT):
                part = tuple(checks[start:start + MAX_CHECKS_PER_REPORT])
                if self._send(agent_id, part, dropped):
                    sent += len(part)
                    dropped = 0  # said once
                else:
                    self._count_lost(len(part))
        if dropped:
            self._count_lost(0, dropped)
        self.sent += sent
        return sent

    def _send(self, agent_id: str, checks: tuple[CheckPerformed, ...], dropped: int) -> bool:
        report = ChecksReported(report_id=f"checks-{uuid.uuid4()}", agent_id=agent_id,
                                service=self.service, checks=checks, dropped=dropped,
                                reported_at=datetime.now(UTC))
        try:
            self._publisher.publish_raw(topics.USAGE.name, self._identity.sign(
                encode(report, source=f"/services/{self.service}")))
        except BrokerError as exc:
            log.warning("could not report %d check(s) of %s: %s", len(checks), agent_id, exc)
            return False
        return True

    def _count_lost(self, lost: int, dropped: int = 0) -> None:
        """Checks that could not be sent are dropped too: the next report says so."""
        with self._lock:
            self.dropped += lost + dropped
            self.dropped_total += lost

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        """Stop the background sender and send what is left."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


class ReportingChecker:
    """A view whose every answer is also recorded by a ``UsageReporter``."""

    def __init__(self, view: Checker, reporter: UsageReporter) -> None:
        self.view = view
        self.reporter = reporter

    def allows(self, agent_id: str, scope: str, resource: str = "", now: Any = None, *,
               at_least: ConsistencyToken | str | None = None) -> Verdict:
        """The view's verdict, recorded."""
        verdict = self.view.allows(agent_id, scope, resource, now, at_least=at_least)
        self.reporter.record(agent_id, scope, resource, verdict)
        return verdict
