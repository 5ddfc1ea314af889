"""Shared fixtures: `services` (real Kafka + Redis, started on demand). Imports tests.services."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.services import Services, provide, unique

__all__ = ["Services", "unique"]


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    """Kafka bootstrap + Redis URL for the whole session; whatever was started is stopped after."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def log(message: str) -> None:
        if reporter is not None:
            reporter.write_line(f"[services] {message}")

    with provide(log) as running:
        yield running
