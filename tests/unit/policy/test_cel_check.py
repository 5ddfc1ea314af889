"""CEL conditions are type-checked against their declared inputs at load time."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import cel
import pytest
from typer.testing import CliRunner

from broker.audit.records import policy_loaded_audit
from broker.audit.replay import policies_in
from broker.cli.main import app
from broker.errors import PolicyError
from broker.policy import load_policy, load_policy_files
from broker.policy.cel_check import check
from broker.policy.cel_inputs import Inputs
from broker.policy.loader import ESCALATION_INPUTS, REVOCATION_INPUTS
from broker.policy.model import CelInputs, Condition, RiskContext, RiskInputs
from broker.policy.source import LineMap, parse_yaml
from schemas.events import AgentProfile, EscalationRequested, ModelInfo, RiskObserved

ROOT = Path(__file__).resolve().parents[3]
BUNDLES = sorted(p for p in (ROOT / "policies").iterdir() if p.is_dir())
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
runner = CliRunner()

# The four typos `policy validate` used to pass: (shipped text, typo, rule, where the column
# points, words the message must hold, the suggestion).
TYPOS = [
    ("request.confidence >= agent", "request.confidnce >= agent", "fraud-freeze-on-pattern",
     "confidnce >=", "unknown field 'confidnce' of request", "did you mean request.confidence?"),
    ("risk.agent >= 0.7", "risk.agnet >= 0.7", "no-pii-for-risky-agent",
     "agnet >=", "unknown field 'agnet' of risk", "did you mean risk.agent?"),
    ("signal.severity >= 0.8", "signal.severty >= 0.8", "revoke-on-behaviour-anomaly",
     "severty >=", "unknown field 'severty' of signal", "did you mean signal.severity?"),
    ("request.risk_score >= 0.8", 'request.confidence >= "high"', "fraud-freeze-on-pattern",
     '>= "high"', "no '>=' for (double, string); request.confidence is a double",
     "did you mean a number? e.g. request.confidence >= 0.9"),
]


def fraud_with(tmp_path: Path, old: str, new: str) -> tuple[Path, str]:
    """A copy of the shipped fraud bundle with the first ``old`` replaced by ``new``."""
    bundle = tmp_path / "fraud"
    shutil.copytree(ROOT / "policies" / "fraud", bundle, ignore=shutil.ignore_patterns("tests"))
    path = bundle / "policy.yaml"
    text = path.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path.write_text(text)
    return bundle, text


def position(text: str, needle: str) -> tuple[int, int]:
    """1-based line and column of the first ``needle`` in ``text``."""
    index = text.index(needle)
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def load_error(bundle: Path) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load_policy(bundle)
    return caught.value


@pytest.mark.parametrize(("old", "new", "rule", "at", "words", "suggestion"), TYPOS,
                         ids=["request.confidnce", "risk.agnet", "signal.severty", "ge-high"])
def test_each_typo_is_rejected_with_field_position_and_suggestion(
        tmp_path: Path, old: str, new: str, rule: str, at: str, words: str,
        suggestion: str) -> None:
    """Each typo fails the load at its file:line:column, in its rule, naming the field."""
    bundle, text = fraud_with(tmp_path, old, new)
    err = load_error(bundle)
    line, column = position(text, at)
    assert (err.file, err.line, err.column, err.rule) == (
        str(bundle / "policy.yaml"), line, column, rule)
    assert words in err.message and err.suggestion == suggestion
    assert str(err).startswith(f"{bundle / 'policy.yaml'}:{line}:{column} (rule {rule}): ")
    assert str(err).endswith(f"; {suggestion}")


@pytest.mark.parametrize(("old", "new", "rule", "at", "words", "suggestion"), TYPOS,
                         ids=["request.confidnce", "risk.agnet", "signal.severty", "ge-high"])
def test_validate_json_reports_column_and_suggestion(
        tmp_path: Path, old: str, new: str, rule: str, at: str, words: str,
        suggestion: str) -> None:
    """`policy validate --json` keeps file, line, rule and error, and adds column and
    suggestion."""
    bundle, text = fraud_with(tmp_path, old, new)
    result = runner.invoke(app, ["policy", "validate", str(bundle), "--json"])
    report = json.loads(result.stdout)
    line, column = position(text, at)
    assert result.exit_code == 2
    assert set(report) == {"valid", "file", "line", "column", "rule", "error", "suggestion"}
    assert (report["valid"], report["line"], report["column"], report["rule"]) == (
        False, line, column, rule)
    assert report["file"].endswith("policy.yaml")
    assert words in report["error"] and report["suggestion"] == suggestion


def test_validate_text_output_names_position_and_suggestion(tmp_path: Path) -> None:
    """The human output carries the same file:line:column and the suggestion."""
    bundle, text = fraud_with(tmp_path, "risk.agent >= 0.7", "risk.agnet >= 0.7")
    result = runner.invoke(app, ["policy", "validate", str(bundle)])
    line, column = position(text, "agnet")
    assert result.exit_code == 2
    assert f"policy.yaml:{line}:{column}" in result.stderr
    assert "did you mean risk.agent?" in result.stderr


def test_column_inside_a_folded_block_points_at_the_typo(tmp_path: Path) -> None:
    """A typo on the second line of a ``>-`` block is placed on that line of the file."""
    bundle, text = fraud_with(tmp_path, '&& signal.evidence.detector == "rate_spike"',
                              '&& signal.evidnce.detector == "rate_spike"')
    err = load_error(bundle)
    assert (err.line, err.column) == position(text, "evidnce")
    assert err.rule == "revoke-on-rate-spike"
    assert err.suggestion == "did you mean signal.evidence?"


def test_tier_condition_in_quotes_is_checked(tmp_path: Path) -> None:
    """A tier's ``when`` is checked too, and a quoted expression's column skips the quote."""
    bundle = tmp_path / "graduated"
    shutil.copytree(ROOT / "policies" / "graduated", bundle,
                    ignore=shutil.ignore_patterns("tests"))
    path = bundle / "policy.yaml"
    text = path.read_text().replace("when: request.confidence >= 0.95 && risk.agent < 0.5",
                                    'when: "request.confidence >= 0.95 && risk.agnet < 0.5"')
    path.write_text(text)
    err = load_error(bundle)
    assert (err.line, err.column, err.rule) == (*position(text, "agnet"), "fraud-graduated")
    assert err.suggestion == "did you mean risk.agent?"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_every_shipped_bundle_validates(bundle: Path) -> None:
    """`permbroker policy validate` accepts every bundle under policies/."""
    result = runner.invoke(app, ["policy", "validate", str(bundle), "--json"])
    assert result.exit_code == 0, result.stdout
    assert json.loads(result.stdout)["valid"] is True


# Expressions that type-check, by the inputs they read; each also runs without error at runtime
# on real inputs (below), so the declared types are the ones conditions really see.
ACCEPTED = {
    "map and list access": [
        (ESCALATION_INPUTS, "request.signals.pattern == 'ato'"),
        (ESCALATION_INPUTS, "agent.labels.team == 'fraud'"),
        (ESCALATION_INPUTS, "agent.operational_params.max_rps > 5"),
        (ESCALATION_INPUTS, "request.scopes[0] == 'payments:accounts.freeze'"),
        (ESCALATION_INPUTS, "size(request.resources) <= 10 && agent.model.name == 'fraud-gbm'"),
        (REVOCATION_INPUTS, "'detector' in signal.evidence && signal.evidence.detector == 'x'"),
    ],
    "optional fields": [
        (ESCALATION_INPUTS, "request.case_id == null"),
        (ESCALATION_INPUTS, "has(request.case_id)"),
        (ESCALATION_INPUTS, "request.case_id != null && request.case_id.startsWith('inc-')"),
        (REVOCATION_INPUTS, "signal.subject_agent_id == agent.agent_id"),
        (REVOCATION_INPUTS, "agent == null || agent.model.version != '3.2'"),
    ],
    "macros": [
        (ESCALATION_INPUTS, "request.resources.exists(r, r.startsWith('vip-'))"),
        (ESCALATION_INPUTS, "request.scopes.all(s, s.startsWith('payments:'))"),
        (ESCALATION_INPUTS, "request.resources.exists_one(r, r == 'acct-1')"),
        (ESCALATION_INPUTS, "'payments:accounts.freeze' in request.scopes"),
        (ESCALATION_INPUTS, "request.scopes.filter(s, s.startsWith('crm:')).size() == 0"),
    ],
    "timestamps and durations": [
        (ESCALATION_INPUTS, "now - timestamp(request.requested_at) < duration('5m')"),
        (ESCALATION_INPUTS, "now.getHours() >= 9 && now.getHours() < 17"),
        (ESCALATION_INPUTS, "duration(string(request.duration_s) + 's') <= duration('15m')"),
        (REVOCATION_INPUTS, "timestamp(signal.observed_at) > now - duration('1h')"),
    ],
}
ACCEPTED_CASES = [case for cases in ACCEPTED.values() for case in cases]

# (inputs, expression, words of the message, the suggestion); at runtime each errors (a deny
# rule then denies, an escalation or revocation rule never holds) or is silently false.
REJECTED = [
    (ESCALATION_INPUTS, "agent.labels.team == 1", "agent.labels.team is a string",
     "did you mean a string? quote the literal, or convert with string()"),
    (ESCALATION_INPUTS, "request.scopes['x'] == 'y'", "no '[]' for (list(string), string)",
     "index a list with an int, and a map with a key of its key type"),
    (ESCALATION_INPUTS, "request.resources.exists(r, r.id == 'x')",
     "is a string and has no field 'id'", "only structs and maps have fields"),
    (ESCALATION_INPUTS, "request.case_id > 1", "no '>' for (string, or null, int)",
     "did you mean a string? quote the literal, or convert with string()"),
    (ESCALATION_INPUTS, "request.resources.exists(r, r.startWith('vip-'))",
     "unknown function or variable 'startWith'", "did you mean startsWith?"),
    (ESCALATION_INPUTS, "request.scopes.all(s, s > 1)", "no '>' for (string, int)",
     "did you mean a string? quote the literal, or convert with string()"),
    (ESCALATION_INPUTS, "request.requested_at < now",
     "request.requested_at is a string (an RFC 3339 time)",
     "did you mean timestamp(request.requested_at)? it turns an RFC 3339 string into a time"),
    (ESCALATION_INPUTS, "request.duration_s > duration('5m')", "no '>' for (int, duration)",
     'write durations as duration("5m"); a duration is not a number'),
    (ESCALATION_INPUTS, "agent.model.vesion == '3.2'", "unknown field 'vesion' of agent.model",
     "did you mean agent.model.version?"),
    (ESCALATION_INPUTS, "request.confidence", "the condition is a double, not a bool",
     "compare it, e.g. request.confidence >= 0.9, or test it with has() or in"),
]


def runtime_inputs(inputs: Inputs) -> CelInputs:
    """The CEL variables as Policy.evaluate and Policy.on_risk build them."""
    request = EscalationRequested(
        request_id="req-1", agent_id="fraud-detector-7", scopes=("payments:accounts.freeze",),
        resources=("acct-1",), duration_s=600, reason="pattern", confidence=0.95,
        signals={"pattern": "ato"}, requested_at=NOW)
    agent = AgentProfile(
        agent_id="fraud-detector-7", agent_class="fraud-detection", owner="ops@example.com",
        model=ModelInfo(name="fraud-gbm", version="3.2"), labels={"team": "fraud"},
        operational_params={"max_rps": 10})
    signal = RiskObserved(signal_id="sig-1", subject_agent_id="fraud-detector-7",
                          kind="behaviour_anomaly", severity=0.9, source="ueba",
                          observed_at=NOW, evidence={"detector": "rate_spike"})
    makers = {
        "request": lambda: request.model_dump(mode="json"),
        "agent": lambda: agent.model_dump(mode="json"),
        "risk": lambda: RiskInputs.of(RiskContext(agent=0.2)).model_dump(),
        "signal": lambda: signal.model_dump(mode="json"),
        "now": lambda: NOW,
    }
    return CelInputs({name: makers[name] for name in inputs.names})


def run(inputs: Inputs, source: str) -> tuple[bool, str | None]:
    program = cel.compile(source)
    return Condition(source, program, frozenset(program.variables())).check(
        runtime_inputs(inputs))


@pytest.mark.parametrize(("inputs", "source"), ACCEPTED_CASES,
                         ids=[source for _, source in ACCEPTED_CASES])
def test_accepted_expressions_check_and_run(inputs: Inputs, source: str) -> None:
    """Map/list access, optional fields, macros and time arithmetic type-check, and run without
    a runtime error on real inputs."""
    assert check(source, inputs) is None
    assert run(inputs, source)[1] is None


@pytest.mark.parametrize(("inputs", "source", "words", "suggestion"), REJECTED,
                         ids=[case[1] for case in REJECTED])
def test_rejected_expressions_name_the_problem_and_would_fail_at_runtime(
        inputs: Inputs, source: str, words: str, suggestion: str) -> None:
    """Each mismatch is reported with the field or types and a suggestion; on real inputs at
    runtime it errors or is false, never true."""
    problem = check(source, inputs)
    assert problem is not None
    assert words in problem.message and problem.suggestion == suggestion
    assert run(inputs, source)[0] is False


def test_mixing_int_and_double_is_rejected_with_the_double_spelling() -> None:
    """The checker refuses ``double >= int`` (the runtime would allow it); ``1.0`` passes."""
    problem = check("request.confidence >= 1", ESCALATION_INPUTS)
    assert problem is not None and problem.offset == len("request.confidence ")
    assert problem.suggestion is not None and "(1.0)" in problem.suggestion
    assert check("request.confidence >= 1.0", ESCALATION_INPUTS) is None


@pytest.mark.parametrize(("variable", "model"), [
    ("request", EscalationRequested), ("agent", AgentProfile), ("risk", RiskInputs),
    ("signal", RiskObserved)])
def test_every_model_field_is_declared(variable: str, model: type) -> None:
    """The declared inputs are the models' fields, every one of them (derived, not listed)."""
    inputs = REVOCATION_INPUTS if variable == "signal" else ESCALATION_INPUTS
    for field in model.model_fields:
        assert check(f"has({variable}.{field})", inputs) is None, field


def test_a_new_model_field_is_declared_without_further_change() -> None:
    """A field added to a wire model is readable by conditions at once."""

    class Wider(EscalationRequested):
        urgency: int = 0

    inputs = Inputs((("request", Wider),))
    assert check("request.urgency > 2", inputs) is None
    problem = check("request.urgncy > 2", inputs)
    assert problem is not None and problem.suggestion == "did you mean request.urgency?"


def test_a_revision_that_already_ran_still_replays() -> None:
    """A recorded bundle with a type error (run before the check existed) loads from the audit
    log as it ran, and its deny rule still fails closed; a new load of it is rejected."""
    shipped = sorted((ROOT / "policies" / "fraud").glob("*.yaml"))
    files = [(p.name, p.read_bytes().replace(b"risk.agent >= 0.7", b"risk.agnet >= 0.7"))
             for p in shipped]
    with pytest.raises(PolicyError) as rejected:
        load_policy_files(files, "mem")
    assert rejected.value.suggestion == "did you mean risk.agent?"
    ran = load_policy_files(files, "mem", check_types=False)
    replayed = policies_in([policy_loaded_audit(ran, NOW, "worker-1")])
    assert list(replayed) == [ran.revision]
    request = EscalationRequested(
        request_id="req-1", agent_id="fraud-detector-7", scopes=("crm:customer.pii.read",),
        resources=("acct-1",), duration_s=60, reason="pattern", confidence=0.99, risk_score=0.9,
        requested_at=NOW)
    policy = replayed[ran.revision]
    evaluation = policy.evaluate(request, policy.agent("fraud-detector-7"), RiskContext(), NOW)
    assert [d.rule for d in evaluation.denied] == ["no-pii-for-risky-agent"]


@pytest.mark.parametrize("written", [
    "when: request.confidence >= 0.8 && request.risk_scor > 0.1\n",
    "when: request.confidence >= 0.8 &&\n  request.risk_scor > 0.1\n",
    "when: 'request.confidence >= 0.8 && request.risk_scor > 0.1'\n",
    'when: "request.reason != \\"x\\" &&\n  request.risk_scor > 0.1"\n',
    "when: >-\n  request.confidence >= 0.8\n  && request.risk_scor > 0.1\n",
    "when: |\n  request.confidence >= 0.8 &&\n    request.risk_scor > 0.1\n",
    "x: {when: request.confidence >= 0.8 && request.risk_scor > 0.1}\n",
], ids=["plain", "plain-folded", "single-quoted", "double-quoted-escapes", "folded", "literal",
        "flow"])
def test_a_position_in_a_value_is_found_in_the_file(written: str) -> None:
    """Whatever YAML style holds the condition, an offset in it maps to its line and column."""
    text = "apiVersion: permbroker/v1\n" + written
    body = parse_yaml(text.encode(), "p.yaml")[0].body
    mapping = body.get("x", body)
    assert isinstance(mapping, LineMap)
    value = mapping["when"]
    assert isinstance(value, str)
    assert mapping.position("when", value.index("risk_scor")) == position(text, "risk_scor")
