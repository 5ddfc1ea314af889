"""CLI error output: one line per bad setting, naming it; user data is never read as markup."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.cli.output import fail
from broker.errors import KafkaUnreachable, StoreUnavailable

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_each_bad_setting_is_one_line_naming_the_variable_and_its_value() -> None:
    """Two bad values: two lines, each naming its PERMBROKER_ variable; no pydantic dump."""
    result = runner.invoke(app, ["policy", "validate", str(ROOT / "policies" / "fraud")],
                           env={"PERMBROKER_SESSION_TIMEOUT_S": "-5",
                                "PERMBROKER_REDIS_PORT": "70000"})
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert "error: PERMBROKER_SESSION_TIMEOUT_S='-5': Input should be greater than 0" in lines
    assert any(line.startswith("error: PERMBROKER_REDIS_PORT='70000'") for line in lines)
    assert len(lines) == 4 and "pydantic" not in result.stderr


def test_an_error_message_is_printed_as_text_on_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A regex or a bracket in the message survives (Rich markup is not interpreted), and a
    long message is not wrapped."""
    message = "agent id must match ^[a-z][a-z0-9-]{0,63}$ [bold]x[/bold] " + "y" * 200
    assert fail(message, "hint [dim]here[/]").exit_code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {message}", "hint: hint [dim]here[/]"]


@pytest.mark.parametrize(("exc", "named"), [
    (KafkaUnreachable("Kafka is unreachable (127.0.0.1:1: Connection refused)"),
     "PERMBROKER_KAFKA_BOOTSTRAP"),
    (StoreUnavailable("Redis did not answer"), "PERMBROKER_REDIS_URL"),
])
def test_the_hint_names_the_real_cause_not_the_caller_s_guess(
    exc: Exception, named: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Given the exception, fail() replaces a guess ('is a worker running?') with its cause."""
    fail(exc, "is a worker running?")
    err = capsys.readouterr().err
    assert named in err and "worker" not in err


def test_a_denial_s_rule_in_brackets_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`permbroker request` prints '[rule X]' literally and a reason's brackets too (Rich
    would otherwise take them for markup tags and drop them)."""
    from datetime import UTC, datetime

    from broker.cli.ops import run as run_module
    from schemas.events import EscalationDecided, ScopeDenial

    decision = EscalationDecided(
        decision_id="decision-1", request_id="req-1", agent_id="a1", outcome="denied",
        denied=(ScopeDenial(scope="x:y.z", rule="ceiling", reason="not in [ceiling]"),),
        policy_revision="sha256:00", decided_at=datetime.now(UTC))

    class Client:
        def __init__(self, *_a: object, **_k: object) -> None: ...
        def __enter__(self) -> Client: return self
        def __exit__(self, *_exc: object) -> None: ...
        def request_escalation(self, *_a: object, **_k: object) -> EscalationDecided:
            return decision

    class Trusted:
        def __enter__(self) -> object: return object()
        def __exit__(self, *_exc: object) -> None: ...

    monkeypatch.setattr(run_module, "AgentClient", Client)
    monkeypatch.setattr(run_module, "trusted", Trusted)
    monkeypatch.setattr(run_module, "cli_kafka", lambda: None)
    result = runner.invoke(app, ["request", "--agent", "a1", "--scope", "x:y.z", "--reason",
                                 "r", "--confidence", "0.9"], env={"COLUMNS": "200"})
    assert result.exit_code == 3
    assert "denied x:y.z: not in [ceiling] [rule ceiling]" in result.stdout


def test_records_refused_while_reading_are_one_line_at_exit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The decode edge logs each refused record; a command prints one line for all of them."""
    import logging

    from broker.cli.main import _RefusalSummary

    summary = _RefusalSummary()
    edge = logging.getLogger("permbroker.edge")
    try:
        for n in range(3):
            edge.warning("jwks refused permbroker.jwks/0/%d: unsigned", n)
        summary.report()
        lines = capsys.readouterr().err.splitlines()
        assert lines == ["note: refused an untrusted record: jwks refused permbroker.jwks/0/0: "
                         "unsigned (and 2 more)"]
    finally:
        edge.removeHandler(summary)
        edge.propagate = True
