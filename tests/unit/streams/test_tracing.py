"""Tracing across Kafka on the in-memory twins: the trace context rides in ``ce_traceparent``,
the worker's decision is a child of the agent's publish, the grant it publishes carries the
decision's context, the context changes no decision, and tracing off adds nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.adapters import tracing
from broker.adapters.kafka import codec
from broker.policy import load_policy
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, EscalationRequested, GrantIssued
from streams.escalations import Escalations
from streams.worker import Incoming, OpenGate, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

FRAUD = load_policy(Path(__file__).resolve().parents[3] / "policies" / "fraud")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

FORGED = b"00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


class World:
    """One worker's escalation path on the twins, its clock stopped at T0."""

    def __init__(self) -> None:
        self.bus = MemoryBus()
        store = MemoryGrantStore(clock=lambda: T0, margin_s=600, view_built_at=T0)
        ctx = WorkerContext(FRAUD, store, self.bus, margin_s=600)
        ctx.ready.set()
        self.escalations = Escalations(ctx, OpenGate(FRAUD))

    def message(self, event: EscalationRequested) -> Incoming:
        encoded = codec.encode(event, source="/tests/tracing")
        return Incoming(topics.ESCALATIONS.name, 0, 1, T0.timestamp(), encoded.key,
                        encoded.value, encoded.headers)

    async def send(self, msg: Incoming) -> None:
        await self.escalations.on_escalation(msg)

    def events(self, topic: str, kind: type[object]) -> list[object]:
        return [e for e in self.bus.events(topic) if isinstance(e, kind)]


def request() -> EscalationRequested:
    return EscalationRequested(
        request_id="req-1", agent_id="fraud-detector-7",
        scopes=("payments:accounts.freeze",), resources=("acct-1",), duration_s=900,
        reason="card-testing pattern", confidence=0.95, risk_score=0.85, requested_at=T0)


def _header(headers: list[tuple[str, bytes]], name: str) -> bytes | None:
    return next((v for k, v in headers if k == name), None)


def test_tracing_off_adds_no_header_and_no_span() -> None:
    assert not tracing.enabled()
    with tracing.span("anything", parent=[(tracing.TRACEPARENT_HEADER, FORGED)]) as s:
        assert s is None  # the shared null context
    encoded = codec.encode(request(), source="/tests")
    assert _header(encoded.headers, tracing.TRACEPARENT_HEADER) is None
    assert tracing.inject() == []


async def test_the_decision_is_a_child_of_the_publish_and_the_grant_carries_it(
        spans: InMemorySpanExporter) -> None:
    w = World()
    with tracing.span("permbroker.agent.publish") as root:
        msg = w.message(request())
    carried = _header(msg.headers, tracing.TRACEPARENT_HEADER)
    assert carried is not None
    assert codec.decode(msg.key, msg.value, msg.headers) == request()  # still a valid event
    await w.send(msg)
    decide = next(s for s in spans.get_finished_spans() if s.name == "permbroker.worker.decide")
    assert decide.parent is not None
    assert decide.parent.span_id == root.get_span_context().span_id
    assert decide.context.trace_id == root.get_span_context().trace_id
    (grant,) = w.bus.topics[topics.GRANTS.name]
    traceparent = _header(grant.headers, tracing.TRACEPARENT_HEADER)
    assert traceparent is not None
    _version, trace_id, parent_id, _flags = traceparent.decode().split("-")
    assert (int(trace_id, 16), int(parent_id, 16)) == (decide.context.trace_id,
                                                       decide.context.span_id)


async def test_the_trace_context_changes_no_decision(spans: InMemorySpanExporter) -> None:
    """The same request with no context and with a forged one: the same decision, grant and
    audit (the context is unsigned, so it must not be able to matter)."""
    plain, forged = World(), World()
    await plain.send(plain.message(request()))
    msg = forged.message(request())
    msg.headers[:] = [(k, v) for k, v in msg.headers if k != tracing.TRACEPARENT_HEADER]
    msg.headers.append((tracing.TRACEPARENT_HEADER, FORGED))
    await forged.send(msg)
    for topic, kind in ((topics.DECISIONS.name, EscalationDecided),
                        (topics.GRANTS.name, GrantIssued), (topics.AUDIT_RAW.name, AuditRecord)):
        assert plain.events(topic, kind) == forged.events(topic, kind)
        assert len(plain.events(topic, kind)) >= 1
    decide = next(s for s in spans.get_finished_spans() if s.name == "permbroker.worker.decide"
                  and s.parent is not None and f"{s.context.trace_id:032x}" in FORGED.decode())
    assert decide.parent is not None and decide.parent.span_id == int(FORGED.split(b"-")[2], 16)


def test_the_file_exporter_writes_one_json_line_per_span(tmp_path: Path) -> None:
    out = tmp_path / "spans.jsonl"
    assert tracing.configure(True, out, "permbroker-test")
    try:
        with tracing.span("outer") as outer, tracing.span("inner", attributes={"k": "v"}):
            pass
    finally:
        tracing.disable()
    inner, outer_line = (json.loads(line) for line in out.read_text().splitlines())
    assert (inner["name"], outer_line["name"]) == ("inner", "outer")
    trace_id = f"{outer.get_span_context().trace_id:032x}"
    assert inner["trace_id"] == outer_line["trace_id"] == trace_id
    assert inner["parent_span_id"] == outer_line["span_id"] and outer_line["parent_span_id"] is None
    assert inner["attributes"] == {"k": "v"} and inner["end_ns"] >= inner["start_ns"]


def test_configure_is_off_unless_asked(tmp_path: Path) -> None:
    assert not tracing.configure(False, tmp_path / "x.jsonl", "permbroker-test")
    assert not tracing.enabled()
