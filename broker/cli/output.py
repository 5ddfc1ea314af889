"""Output helpers shared by the CLI modules (errors with a hint, times, JSON). Imports typer, rich.

Every time shown is absolute (UTC) with the time remaining or elapsed; every error says what to
do next and returns the non-zero exit to raise.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from broker.errors import (
    KafkaNotAllowed,
    KafkaRefused,
    KafkaUnreachable,
    StoreRefused,
    StoreUnavailable,
)
from broker.policy.fields import parse_duration

# soft_wrap: long lines (paths, ids, hashes) are never broken, so output stays grep-able.
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
_AGE = re.compile(r"^-?\s*(\d+[smhd])(\s+ago)?$")
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str | BaseException, hint: str = "", code: int = 1) -> typer.Exit:
    """Print an error (and what to do) to stderr; return the exit to raise.

    Given the exception itself, the hint names its real cause when it is one (Kafka or Redis
    down, credentials refused, a key file missing) instead of the caller's guess. The message
    is user data: printed as is, never read as Rich markup, on one line.
    """
    if isinstance(message, BaseException):
        hint = cause_hint(message) or hint
    text = " ".join(str(message).split())
    err.print(Text.assemble(("error:", "bold red"), " ", text), highlight=False, soft_wrap=True)
    if hint:
        err.print(Text.assemble(("hint:", "dim"), " ", hint), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def cause_hint(exc: BaseException) -> str:
    """What to do about an error whose cause is known from its type ("" if not known)."""
    hints: tuple[tuple[type[BaseException], str], ...] = (
        (KafkaUnreachable, "Kafka is down or not at PERMBROKER_KAFKA_BOOTSTRAP: start it "
         "(permbroker stack up) or point the variable at it"),
        (KafkaRefused, "check PERMBROKER_KAFKA_USERNAME and PERMBROKER_KAFKA_PASSWORD (the "
         "local stack's: permbroker stack env --role operator)"),
        (KafkaNotAllowed, "the user's ACLs do not allow it: a tenant's operator user reads only "
         "its tenant's own topics (its copy of the audit among them); what every tenant shares "
         "(approvals, acknowledgements) its operators see in the console"),
        (StoreRefused, "check the user and password in PERMBROKER_REDIS_URL (the local "
         "stack's: permbroker stack env --role operator)"),
        (StoreUnavailable, "Redis is down or not at PERMBROKER_REDIS_URL: start it "
         "(permbroker stack up) or point the variable at it"),
    )
    return next((hint for kind, hint in hints if isinstance(exc, kind)), "")


def until(when: datetime | None, now: datetime | None = None, never: str = "-") -> str:
    """The one time format of the CLI: ISO 8601 UTC and the time remaining or elapsed, e.g.
    ``2026-12-05T21:04:05Z (in 14m 59s)`` or ``2026-12-05T20:49:05Z (3h 2m ago)``."""
    if when is None:
        return never
    now = now or datetime.now(UTC)
    left = (when - now).total_seconds()
    rel = f"in {human(left)}" if left >= 0 else f"{human(left)} ago"
    return f"{stamp(when)} ({rel})"


def stamp(when: datetime) -> str:
    """An instant as ISO 8601 UTC to the second, with ``Z``."""
    return f"{when.astimezone(UTC):%Y-%m-%dT%H:%M:%S}Z"


def human(seconds: float) -> str:
    """A duration as people read it, its two largest units: 45s, 14m 59s, 3h 2m, 7d 0h."""
    total = round(abs(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def print_json(data: Any) -> None:
    """Indented JSON on stdout."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An instant: ISO 8601 (``2026-11-28T10:00:00Z``; UTC if no offset), ``now``, or an age
    such as ``10m``, ``10m ago`` or ``-10m``. Raises typer.BadParameter saying what to use."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value == "now":
        return now
    age = _AGE.match(value)
    if age is not None:
        return now - timedelta(seconds=parse_duration(age[1]) or 0)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(
            f"{text!r} is not a time: use ISO 8601 (2026-11-28T10:00:00Z), 'now', or an age "
            "such as '10m ago'"
        ) from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def time_option(text: str | None) -> datetime | None:
    """``parse_time`` for an optional option."""
    return parse_time(text) if text is not None else None
