"""Spans to a file as JSON lines, for a process whose spans a test or an operator collects.

Imports stdlib and opentelemetry (the ``permbroker[otel]`` extra): only ``broker.adapters.tracing``
imports it, once tracing is on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


class JsonLinesExporter(SpanExporter):
    """A span exporter writing one JSON object per span to a file (append, flushed per batch):
    trace and span ids in hex, the parent's span id, name, attributes, start and end in ns."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_record(s)) + "\n" for s in spans]
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            out.writelines(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing held open between batches."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Every batch is written when exported."""
        return True


def span_record(s: ReadableSpan) -> dict[str, Any]:
    """One finished span as a JSON-ready dict (the exporter's line format)."""
    context = s.get_span_context()
    assert context is not None
    return {
        "name": s.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_span_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
        "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
        "start_ns": s.start_time,
        "end_ns": s.end_time,
    }
