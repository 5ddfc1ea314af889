"""Optional OpenTelemetry tracing across Kafka. Imports stdlib, and opentelemetry when installed.

The W3C trace context travels in the CloudEvents distributed-tracing extension: in binary mode
the Kafka header ``ce_traceparent`` (and ``ce_tracestate``). The codec stamps the current span's
context on every record it encodes; a consumer opens its span as a child of the record's context.

The trace context is not covered by a record's signature (which binds the value, id, type, key
and time), and it need not be: nothing but this module reads it, and it only chooses the parent
of a span. No decision, grant or audit record depends on it (a unit test decides the same request
with and without a forged context and compares the results).

Off unless ``enable`` is called (``configure`` does so when ``PERMBROKER_TRACING`` is on and the
``permbroker[otel]`` extra is installed): until then ``span`` returns a shared null context and
``inject`` adds nothing (a global read per call; this module imports opentelemetry only then).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

TRACEPARENT_HEADER = "ce_traceparent"
TRACESTATE_HEADER = "ce_tracestate"
_HEADERS = {"traceparent": TRACEPARENT_HEADER, "tracestate": TRACESTATE_HEADER}
TRACER_NAME = "permbroker"

log = logging.getLogger(__name__)
_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_tracer: Any = None  # an opentelemetry Tracer once enabled


def available() -> bool:
    """Whether the ``permbroker[otel]`` extra is installed."""
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        return False
    return True


def enable(provider: TracerProvider) -> None:
    """Trace through ``provider`` (the worker's file exporter, a test's in-memory one)."""
    global _tracer
    _tracer = provider.get_tracer(TRACER_NAME)


def disable() -> None:
    """Stop tracing: spans become no-ops again."""
    global _tracer
    _tracer = None


def enabled() -> bool:
    """Whether spans are recorded."""
    return _tracer is not None


def configure(on: bool, file: str | Path | None, service: str) -> bool:
    """Enable tracing for a process when ``on`` and the extra is installed; spans go as JSON
    lines to ``file`` (one object per finished span). True when tracing is now on."""
    if not on:
        return False
    if not available():
        log.warning("PERMBROKER_TRACING is on but the permbroker[otel] extra is not installed: "
                    "no spans are recorded")
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from broker.adapters.spanfile import JsonLinesExporter

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(file)))
    enable(provider)
    return True


def inject() -> list[tuple[str, bytes]]:
    """The ``ce_traceparent``/``ce_tracestate`` headers of the current span (none when off)."""
    if _tracer is None:
        return []
    from opentelemetry.propagate import get_global_textmap

    carrier: dict[str, str] = {}
    get_global_textmap().inject(carrier)
    return [(_HEADERS[k], v.encode()) for k, v in carrier.items() if k in _HEADERS]


def _carrier(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]) -> dict[
        str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted = {v: k for k, v in _HEADERS.items()}
    return {wanted[name]: value.decode("ascii", "replace") for name, value in items
            if name in wanted and value is not None}


def span(name: str, *, parent: Iterable[tuple[str, bytes | None]] | None = None,
         attributes: Mapping[str, str] | None = None) -> AbstractContextManager[Any]:
    """A span named ``name``, child of the trace context in ``parent`` headers when they carry
    one (else of the current span); a shared null context when tracing is off."""
    if _tracer is None:
        return _NULL
    return _span(name, parent, attributes or {})


@contextlib.contextmanager
def _span(name: str, parent: Iterable[tuple[str, bytes | None]] | None,
          attributes: Mapping[str, str]) -> Iterator[Any]:
    from opentelemetry.propagate import get_global_textmap

    context = get_global_textmap().extract(_carrier(parent)) if parent is not None else None
    with _tracer.start_as_current_span(name, context=context, attributes=dict(attributes)) as s:
        yield s
