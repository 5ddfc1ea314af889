"""Policy tests: the shipped bundles' fixtures pass, and a failing one names fixture and rule."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.grants.policy_tests import TESTS_DIR, run_suite

ROOT = Path(__file__).resolve().parents[3]
BUNDLES = sorted(p.parent for p in (ROOT / "policies").glob(f"*/{TESTS_DIR}") if p.is_dir())
runner = CliRunner()


def test_every_shipped_bundle_has_policy_tests() -> None:
    """Each example bundle ships fixtures (so CI exercises what it decides)."""
    assert BUNDLES and {p.name for p in BUNDLES} == {
        p.name for p in (ROOT / "policies").iterdir() if p.is_dir()}


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_shipped_policy_tests_pass(bundle: Path) -> None:
    """`permbroker policy test BUNDLE` passes every shipped fixture case and exits 0."""
    result = runner.invoke(app, ["policy", "test", str(bundle), "--json"])
    report = json.loads(result.stdout)
    failing = [c for c in report["cases"] if not c["passed"]]
    assert result.exit_code == 0 and report["ok"], (failing, report["errors"])
    assert len(report["cases"]) >= 10


def _copy(tmp_path: Path) -> Path:
    bundle = tmp_path / "fraud"
    shutil.copytree(ROOT / "policies" / "fraud", bundle)
    return bundle


def test_a_failing_fixture_names_the_fixture_and_the_rule(tmp_path: Path) -> None:
    """A wrong expectation fails the run, naming file:line, the test and the deciding rule."""
    bundle = _copy(tmp_path)
    fixture = bundle / TESTS_DIR / "escalations.yaml"
    text = fixture.read_text()
    pinned = ('expect: {outcome: denied, denied: {payments:transfers.create: '
              '"ceiling:fraud-detection"')
    assert pinned in text
    fixture.write_text(text.replace(pinned + "}}", "expect: {outcome: granted}"))
    line = next(i for i, row in enumerate(fixture.read_text().splitlines(), start=1)
                if "moving money is outside the fraud ceiling" in row)
    result = runner.invoke(app, ["policy", "test", str(bundle)])
    assert result.exit_code == 1
    assert f"escalations.yaml:{line} test 'moving money is outside the fraud ceiling'" in (
        result.stdout)
    assert "expected outcome granted, got denied" in result.stdout
    assert "denied by rule ceiling:fraud-detection" in result.stdout


def test_a_policy_change_fails_the_fixture_that_pins_it(tmp_path: Path) -> None:
    """Raising a rule's max duration breaks the fixture that pins the 20s clamp."""
    bundle = _copy(tmp_path)
    policy = bundle / "policy.yaml"
    policy.write_text(policy.read_text().replace("max_duration: 20s", "max_duration: 60s"))
    report = run_suite(bundle)
    assert not report.ok
    [failed] = [c for c in report.cases if not c.passed]
    assert "clamped to 20s" in failed.name and "expected duration 20s, got 60s" in failed.failures
    assert "fraud-freeze-on-pattern" in failed.decided


def test_a_malformed_fixture_is_an_error_with_its_line(tmp_path: Path) -> None:
    """An unknown field in a case is reported with file, line and test, never skipped."""
    bundle = _copy(tmp_path)
    fixture = bundle / TESTS_DIR / "revocations.yaml"
    fixture.write_text(fixture.read_text().replace("signal: {kind: model_changed",
                                                   "singal: {kind: model_changed"))
    result = runner.invoke(app, ["policy", "test", str(bundle), "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and not report["ok"]
    assert any("revocations.yaml:" in e and "unknown field 'singal'" in e
               for e in report["errors"]), report["errors"]


def test_a_bundle_without_fixtures_fails(tmp_path: Path) -> None:
    """Asking to test a bundle that has no fixtures is an error, not a silent pass."""
    shutil.copy(ROOT / "policies" / "fraud" / "policy.yaml", tmp_path / "policy.yaml")
    (tmp_path / TESTS_DIR).mkdir()
    result = runner.invoke(app, ["policy", "test", str(tmp_path)])
    assert result.exit_code == 1 and "no fixture files" in result.stderr  # errors on stderr
