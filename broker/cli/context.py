"""The settings of one CLI invocation, read once at its entry. Imports broker.config.

``permbroker``'s root callback (and ``python -m broker.cli.ops.stack``) reads the settings once and
hands them to ``use_settings``; every command asks ``cli_settings()`` for them. (A context
variable, not click's context object: Typer vendors its own click.)
"""

from __future__ import annotations

from contextvars import ContextVar

from broker.config import Settings

_SETTINGS: ContextVar[Settings] = ContextVar("permbroker_cli_settings")


def use_settings(settings: Settings) -> None:
    """Make ``settings`` this invocation's (called by the entry point only)."""
    _SETTINGS.set(settings)


def cli_settings() -> Settings:
    """The settings this invocation read at its entry point."""
    try:
        return _SETTINGS.get()
    except LookupError as exc:
        raise RuntimeError("no settings for this command: run it through permbroker") from exc
