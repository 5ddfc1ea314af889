"""Structured logs for the worker and the API (structlog over the standard library's logging).

Imports structlog and the standard library only.

Each process calls ``logging_config`` (or ``configure``) once at its entry point. Every record
of the standard library's loggers that reach the root (ours, faust's, aiokafka's, uvicorn's) goes
through structlog's ``ProcessorFormatter``: one JSON object per line when the stream is not a
terminal (or ``PERMBROKER_LOG_FORMAT=json``), structlog's console renderer on a terminal (or
``PERMBROKER_LOG_FORMAT=console``). The ids bound with ``bound`` (agent, request, grant, event,
the message's topic/partition/offset) are on every line logged while they are bound. ``redact``
runs last before rendering: a field named like a secret is replaced whole, and tokens (JWS),
private keys (PEM), ``password=...``-style pairs and bearer credentials are cut out of every
string, the message and the exception text included, as are the values ``hide`` was given.
A secret in none of these forms is not recognised: secrets are still never passed to a logger.
"""

from __future__ import annotations

import logging
import logging.config
import os
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

REDACTED = "[redacted]"
FORMAT_VAR = "PERMBROKER_LOG_FORMAT"
# A field whose name says it holds a secret is never logged, whatever its value looks like.
_SECRET_FIELD = re.compile(r"pass(word|wd)?|secret|token|private|credential|authorization|"
                           r"api[_-]?key|signing[_-]?key|cookie", re.IGNORECASE)
_SECRET_TEXT = (
    # A JWS/JWT (header.payload.signature), as agents' tokens and signed records carry.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # A PEM private key, whole (a truncated one too).
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z0-9 ]*PRIVATE "
                r"KEY-----|$)"), REDACTED),
    # password=..., "secret": "...", token: ... (the name kept, the value cut).
    (re.compile(r"(?i)\b(pass(?:word|wd)?|secret|token|api[_-]?key|credentials?)"
                r"(\"?'?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;}&]+)"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), rf"\1 {REDACTED}"),
)


_LITERALS: set[str] = set()  # secrets this process holds (a Kafka password): never logged


def hide(*secrets: str | None) -> None:
    """Cut these exact values out of every line from now on (short ones are not taken: they
    would cut ordinary words)."""
    _LITERALS.update(s for s in secrets if s and len(s) >= 8)


def scrub(text: str) -> str:
    """``text`` with every secret pattern, and every hidden value, cut out."""
    for secret in _LITERALS:
        text = text.replace(secret, REDACTED)
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _clean(value: object) -> object:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_FIELD.search(str(k)) else _clean(v)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


Event = MutableMapping[str, Any]


def redact(_logger: object, _name: str, event: Event) -> Event:
    """A structlog processor: secret-named fields replaced, secret patterns cut from strings;
    fields bound to None dropped (an id not known for this line)."""
    for key in list(event):
        value = event[key]
        if value is None:
            del event[key]
        elif key != "event" and _SECRET_FIELD.search(key):
            event[key] = REDACTED
        else:
            event[key] = _clean(value)
    return event


@contextmanager
def bound(**ids: object) -> Iterator[None]:
    """Carry ``ids`` on every line logged inside the block (this task only)."""
    with structlog.contextvars.bound_contextvars(**ids):
        yield


def bind(**ids: object) -> None:
    """Carry ``ids`` from now until the enclosing ``bound`` block ends."""
    structlog.contextvars.bind_contextvars(**ids)


def _json(stream: TextIO | None) -> bool:
    chosen = os.environ.get(FORMAT_VAR, "").lower()
    if chosen in ("json", "console"):
        return chosen == "json"
    target = stream or sys.stderr
    return not (hasattr(target, "isatty") and target.isatty())


# What every line gets before rendering, whichever logger wrote it.
_PRE: tuple[Processor, ...] = (
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
)


def formatter(json: bool) -> structlog.stdlib.ProcessorFormatter:
    """The formatter every handler uses: ids merged, secrets cut, then rendered."""
    pre: list[Processor] = [*_PRE, structlog.stdlib.ExtraAdder()]
    last: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if json:
        last += [structlog.processors.format_exc_info, redact,
                 structlog.processors.JSONRenderer()]
    else:
        last += [structlog.processors.format_exc_info, redact,
                 structlog.dev.ConsoleRenderer(colors=False)]
    return structlog.stdlib.ProcessorFormatter(foreign_pre_chain=pre, processors=last)


def logging_config(level: str = "INFO", stream: TextIO | None = None,
                   json: bool | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: one handler on ``stream`` (stderr) at ``level``."""
    as_json = _json(stream) if json is None else json
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"structured": {"()": formatter, "json": as_json}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "structured",
                                 "stream": stream or sys.stderr}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def configure(level: str = "INFO", stream: TextIO | None = None,
              json: bool | None = None) -> None:
    """Route every standard-library record, and structlog's own loggers, through the
    structured formatter."""
    logging.config.dictConfig(logging_config(level, stream, json))
    structlog.configure(
        processors=[*_PRE, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
