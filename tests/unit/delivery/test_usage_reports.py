"""Check reports without Kafka: batching per agent, the memory bound, dropped counts, the audit.

The publisher is a stub that keeps (or refuses) what it is given; the messages are the real
encoded, signed reports, decoded back with the real codec. The live path (Kafka, the worker's
audit, ``permbroker audit checks``) is tested in tests/integration/delivery/test_mcp.py.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.service_key import ServiceIdentity
from broker.adapters.kafka.codec import Encoded, decode
from broker.audit.checks import CHECK_KIND, DROPPED_KIND, check_audits, matches
from broker.errors import BusError
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.usage import ReportingChecker, UsageReporter
from schemas.events import ChecksReported, GrantIssued

FREEZE = "payments:accounts.freeze"
NOW = datetime.now(UTC)
GRANT = GrantIssued(
    grant_id="grant-1", agent_id="a-1", request_id="req-1", scopes=(FREEZE,),
    resources=("acct-1",), issued_at=NOW, expires_at=NOW, policy_revision="sha256:ab",
    rules=("r",), model_version="1", model_digest="sha256:0")


class StubPublisher:
    """Keeps each report; refuses while ``down``; blocks while ``gate`` is closed."""

    def __init__(self) -> None:
        self.sent: list[ChecksReported] = []
        self.down = False
        self.gate = threading.Event()
        self.gate.set()

    def publish_raw(self, topic: str, message: Encoded, *, timeout: float = 10.0) -> None:
        self.gate.wait()
        if self.down:
            raise BusError("Kafka unavailable")
        event = decode(message.key, message.value, dict(message.headers))
        assert isinstance(event, ChecksReported) and message.key == event.agent_id.encode()
        assert any(name == "ce_signature" for name, _ in message.headers)
        self.sent.append(event)


def reporter(publisher: StubPublisher, max_pending: int = 100) -> UsageReporter:
    # A long interval: the tests flush themselves.
    return UsageReporter(publisher, service=ServiceIdentity("payments-mcp", SigningKey.generate()),
                         max_pending=max_pending, interval_s=3600)


def test_checks_are_reported_per_agent_with_their_grant() -> None:
    """One signed report per agent; an allowed check names its grant, a denied one none."""
    pub = StubPublisher()
    usage = reporter(pub)
    usage.record("a-1", FREEZE, "acct-1", Verdict(True, grant=GRANT))
    usage.record("a-2", FREEZE, "acct-9", Verdict(False, "no active grant"))
    usage.record("a-1", FREEZE, "acct-2", Verdict(False, "no active grant"))
    assert usage.flush() == 3
    by_agent = {r.agent_id: r for r in pub.sent}
    assert [(c.resource, c.allowed, c.grant_id) for c in by_agent["a-1"].checks] == [
        ("acct-1", True, "grant-1"), ("acct-2", False, None)]
    assert by_agent["a-2"].checks[0].reason == "no active grant"
    assert {r.service for r in pub.sent} == {"payments-mcp"}
    usage.close()


def test_memory_is_bounded_and_the_next_report_says_how_many_were_dropped() -> None:
    """Past the bound a check is dropped (and counted), never kept; the count is reported once."""
    pub = StubPublisher()
    usage = reporter(pub, max_pending=2)
    for n in range(5):
        usage.record("a-1", FREEZE, f"acct-{n}", Verdict(False, "no"))
    assert usage.dropped_total == 3
    usage.flush()
    assert [len(r.checks) for r in pub.sent] == [2] and pub.sent[0].dropped == 3
    usage.record("a-1", FREEZE, "acct-1", Verdict(False, "no"))
    usage.flush()
    assert pub.sent[-1].dropped == 0
    usage.close()


def test_a_report_kafka_refused_is_counted_as_dropped() -> None:
    """Checks that could not be sent are not kept forever: the next report counts them."""
    pub = StubPublisher()
    usage = reporter(pub)
    usage.record("a-1", FREEZE, "acct-1", Verdict(False, "no"))
    pub.down = True
    assert usage.flush() == 0
    pub.down = False
    usage.record("a-1", FREEZE, "acct-2", Verdict(False, "no"))
    usage.flush()
    assert pub.sent[-1].dropped == 1 and usage.dropped_total == 1
    usage.close()


def test_recording_never_waits_for_a_report_in_flight() -> None:
    """While a report is stuck in Kafka, checks are still recorded (the lock is not held)."""
    pub = StubPublisher()
    usage = reporter(pub)
    usage.record("a-1", FREEZE, "acct-1", Verdict(False, "no"))
    pub.gate.clear()
    flusher = threading.Thread(target=usage.flush)
    flusher.start()
    checker = ReportingChecker(_Fixed(), usage)
    for _ in range(10):
        assert checker.allows("a-1", FREEZE, "acct-1").allowed
    pub.gate.set()
    flusher.join()
    usage.close()
    assert sum(len(r.checks) for r in pub.sent) == 11


class _Fixed:
    def allows(self, agent_id: str, scope: str, resource: str = "", now: object = None, *,
               at_least: object = None) -> Verdict:
        return Verdict(True, grant=GRANT)


def test_each_check_is_audited_and_found_by_resource_scope_agent_and_grant() -> None:
    """One check.performed record per check (ids stable per report), a checks.dropped record
    when some were dropped; ``matches`` finds who did what where under which grant."""
    pub = StubPublisher()
    usage = reporter(pub)
    usage.record("a-1", FREEZE, "acct-1", Verdict(True, grant=GRANT))
    usage.record("a-1", FREEZE, "acct-9", Verdict(False, "no active grant"))
    usage.flush()
    report = pub.sent[0].model_copy(update={"dropped": 4})
    records = check_audits(report, NOW)
    assert [r.kind for r in records] == [CHECK_KIND, CHECK_KIND, DROPPED_KIND]
    assert [r.audit_id for r in records] == [r.audit_id for r in check_audits(report, NOW)]
    allowed = [r for r in records if matches(r, resource="acct-1", scope=FREEZE)]
    assert [(r.agent_id, r.subject_id, r.outcome) for r in allowed] == [
        ("a-1", "grant-1", "allowed")]
    assert [r.outcome for r in records if matches(r, agent="a-1", grant="grant-1")] == ["allowed"]
    assert not [r for r in records if matches(r, resource="acct-2")]
    usage.close()
