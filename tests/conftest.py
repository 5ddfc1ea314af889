"""Shared fixtures: `services` (real Kafka + Redis, started on demand).

Imports tests.support.services.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.services import Services, provide, unique

__all__ = ["Services", "unique"]


@pytest.fixture(scope="session")
def services(request: pytest.FixtureRequest) -> Iterator[Services]:
    """Kafka bootstrap + Redis URL for the whole session; whatever was started is stopped after."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")

    def log(message: str) -> None:
        """Show setup progress live: a cold start can take a while (Maven, JVM)."""
        if reporter is None or capture is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"[services] {message}")

    with provide(log) as running:
        yield running
