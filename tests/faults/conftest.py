"""Fault-suite fixtures: the session worker on a policy with a rate-limited class, the report.

Shares the integration suite's fixtures (``worker``, ``publisher``, ``tap``, ``rclient``, ...
from tests/support/fixtures.py) on the session services; tests that kill or restart a service
start their own (tests/support/faults/private.py) on ports BASE+10..
(tests/support/faults/ports.py). Every test here is marked ``faults`` and runs under
``make test-faults``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.adapters.audit.keys import ensure_keys
from broker.config import Settings
from tests.support.faults.bundles import CLASSES, POOL, write_bundle
from tests.support.faults.ports import BASE
from tests.support.faults.report import Figures, Report
from tests.support.fixtures import (  # noqa: F401 - fixtures of this suite
    every_grant_key_expires,
    publisher,
    rclient,
    registrar,
    run_id,
    shared_trust_closed,
    tap,
    trust,
    worker,
)
from tests.support.identities import Registrar, pool_taker
from tests.support.services import Services

HERE = Path(__file__).resolve().parent
METRICS_PORT = BASE + 1
SEALER_METRICS_PORT = BASE + 3
_REPORT = Report()


def pytest_configure(config: pytest.Config) -> None:
    """Register the criterion marker (the number of the reliability criterion a test proves)."""
    config.addinivalue_line("markers", "criterion(n): reliability criterion the test proves")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults is part of the fault suite."""
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.faults)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each test's outcome for the report."""
    rep = yield
    if rep.when == "call" or (rep.when == "setup" and rep.outcome != "passed"):
        _REPORT.outcomes[item.name] = rep.outcome
    return rep


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write reports/reliability.md when any fault test ran."""
    if _REPORT.tests:
        _REPORT.write()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the reliability table at the end of the run."""
    if not _REPORT.tests:
        return
    terminalreporter.section("reliability figures")
    for r in _REPORT.rows():
        terminalreporter.write_line(
            f"#{r.criterion:<3} {r.test:<58} {r.name:<44} {r.value:>12}  {r.limit:<16} "
            f"{'pass' if r.ok else 'FAIL'}"
        )


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """The figures of this test (criterion from its ``criterion`` marker)."""
    marker = request.node.get_closest_marker("criterion")
    return _REPORT.open(str(marker.args[0]) if marker else "-", request.node.name)


@pytest.fixture(scope="session")
def test_policy(tmp_path_factory: pytest.TempPathFactory, run_id: str) -> Path:
    """The fault suite's bundle (overrides the integration one for tests/faults)."""
    return write_bundle(tmp_path_factory.mktemp("policy"), run_id)


@pytest.fixture(scope="session")
def agents(run_id: str, registrar: Registrar) -> Callable[[str], str]:
    """A never-used agent id: 'f' fraud, 'r' reporting, 'b' bulk-test, 'x' flood-test.

    Each is registered with a key of its own (signature checks stay on in this suite too).
    """
    return pool_taker(run_id, registrar, CLASSES, POOL)


@pytest.fixture(scope="session")
def settings(
    services: Services,
    test_policy: Path,
    run_id: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings of the session worker: the integration ones plus a metrics port."""
    settings = Settings(
        kafka_bootstrap=services.bootstrap,
        kafka_credentials_file=services.credentials_file,
        redis_url=services.redis_url,
        policy_path=test_policy,
        app_id=f"permbroker-faults-{run_id}",
        stack_dir=tmp_path_factory.mktemp("worker"),
        expiry_interval_s=0.2,
        session_timeout_s=6.0,
        metrics_port=METRICS_PORT,
        audit_sealer=False,  # the sealer runs as its own process (the worker fixture)
        audit_sealer_metrics_port=SEALER_METRICS_PORT,
    )
    ensure_keys(settings)  # a worker without its audit keys refuses to start
    return settings
