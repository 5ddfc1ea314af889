"""Traces across Kafka on the live stack: the agent's publish, the worker's decision and the view's
apply of the same request are one trace, each span the child of the one before.

The agent and the view run in this process (spans to the in-memory exporter); the worker is a
separate process that writes its spans as JSON lines to ``settings.tracing_file``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from broker.adapters import tracing
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.identities import agent_client, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, into an in-memory exporter (off again afterwards)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


def worker_spans(settings: Settings) -> list[dict[str, Any]]:
    """The spans the worker process has written so far."""
    assert settings.tracing_file is not None
    if not settings.tracing_file.exists():
        return []
    return [json.loads(line) for line in settings.tracing_file.read_text().splitlines() if line]


def ids(span: ReadableSpan) -> tuple[str, str]:
    """A span's trace id and span id, in the exporter's hex form."""
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


def test_the_publish_the_decision_and_the_apply_are_one_trace(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    spans: InMemorySpanExporter,
) -> None:
    agent = agents("f")
    with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings)) as view:
        assert view.wait_ready(30)
        with agent_client(settings, agent) as client:
            decision = client.request_escalation(
                ["payments:accounts.freeze"], resources=["acct-1"], duration_s=20,
                reason="tracing", risk_score=0.93, confidence=0.95)
        assert decision.outcome == "granted" and decision.grant_id
        wait_until(lambda: view.allows(agent, "payments:accounts.freeze", "acct-1").allowed, 10,
                   "the grant applied by the view")
    (publish,) = [s for s in spans.get_finished_spans() if s.name == "permbroker.agent.publish"
                  and (s.attributes or {}).get("permbroker.event_id") == decision.request_id]
    trace_id, publish_id = ids(publish)
    decide = wait_until(lambda: next((s for s in worker_spans(settings)
                                      if s["name"] == "permbroker.worker.decide"
                                      and s["trace_id"] == trace_id), None),
                        10, "the worker's decision span in its span file")
    assert decide["parent_span_id"] == publish_id
    assert decide["attributes"]["permbroker.request_id"] == decision.request_id
    applied = [s for s in spans.get_finished_spans() if s.name == "permbroker.view.apply"
               and (s.attributes or {}).get("permbroker.event_id") == decision.request_id]
    assert applied, "no apply span for the grant"
    for apply in applied:
        assert ids(apply)[0] == trace_id
        assert apply.parent is not None and f"{apply.parent.span_id:016x}" == decide["span_id"]
