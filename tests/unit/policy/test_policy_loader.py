"""Policy bundle loader: strict validation with file, line and rule in every error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.errors import PolicyError
from broker.policy import load_policy
from broker.policy.fields import parse_duration
from tests.support.policy_files import BASE, FRAUD, assert_at, line_of, load_error, write


def test_base_bundle_loads(tmp_path: Path) -> None:
    """The minimal single-file, two-document bundle loads."""
    policy = load_policy(write(tmp_path, BASE))
    assert [r.id for r in policy.escalation_rules] == ["fraud-freeze"]
    assert policy.max_grant_duration_s == 20


def test_fraud_bundle_fills_profiles_from_classes() -> None:
    """The shipped fraud bundle loads; agent baseline and ceiling come from the class."""
    policy = load_policy(FRAUD)
    agent = policy.agent("fraud-detector-7")
    assert agent is not None and agent.model.version == "3.2"
    assert agent.baseline == ("payments:transactions.read",)
    assert "payments:accounts.*" in agent.ceiling
    assert {a.agent_class for a in policy.agents()} == {"fraud-detection", "reporting"}
    assert policy.revision.startswith("sha256:") and len(policy.revision) == 7 + 16
    assert policy.source == str(FRAUD)


def test_bad_cel_names_file_line_rule_and_cel_error(tmp_path: Path) -> None:
    """A CEL expression that does not compile is reported with the CEL error."""
    text = BASE.replace("request.confidence >= agent.confidence_threshold",
                        "request.confidence >= && agent")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "request.confidence >= &&"), "fraud-freeze")
    assert "does not compile" in err.message and "Syntax error" in err.message


def test_unknown_field_lists_allowed_fields(tmp_path: Path) -> None:
    """A misspelt field is named along with the fields that are allowed."""
    text = BASE.replace("    max_duration: 20s", "    max_duraton: 20s")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "max_duraton"), "fraud-freeze")
    assert err.message == (
        "unknown field 'max_duraton' in an escalation rule; allowed: agent_classes, approval,"
        " budgets, description, id, max_duration, max_resources, max_total_duration, resources,"
        " scopes, tiers, when")


def test_unknown_field_at_top_level_and_in_agent(tmp_path: Path) -> None:
    """Unknown fields are rejected in every mapping, not only in rules."""
    text = BASE.replace("name: test", "name: test\nowner: me")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, 4, None)
    assert "unknown field 'owner' in a Policy document" in err.message
    text = BASE.replace("    owner: fraud-ops@example.com", "    ownr: fraud-ops@example.com")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "ownr"), None)
    assert "unknown field 'ownr' in an agent" in err.message


def test_missing_field_is_named(tmp_path: Path) -> None:
    """A rule without a required field is reported at the rule's line."""
    text = BASE.replace("    reason: risky agent\n", "")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "id: no-pii"), "no-pii")
    assert err.message == "missing field 'reason' in a deny rule"


def test_glob_in_escalation_scope_is_rejected(tmp_path: Path) -> None:
    """Escalation rules must name concrete scopes, never globs."""
    text = BASE.replace("scopes: [payments:accounts.freeze,", "scopes: [payments:accounts.*,")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "scopes: [payments:accounts.*,"), "fraud-freeze")
    assert "glob 'payments:accounts.*' is not allowed in an escalation rule's scopes" in str(err)


def test_glob_in_baseline_is_rejected(tmp_path: Path) -> None:
    """A baseline names concrete scopes only."""
    text = BASE.replace("baseline: [payments:transactions.read]", "baseline: [payments:*]")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "baseline:"), None)
    assert "not allowed in the baseline" in err.message


def test_bad_scope_syntax_is_rejected(tmp_path: Path) -> None:
    """A malformed scope is reported with the expected syntax."""
    text = BASE.replace('scopes: ["crm:*"]', 'scopes: ["CRM:Customer"]')
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "CRM:Customer"), "no-pii")
    assert "bad scope 'CRM:Customer'" in err.message
    assert "namespace:resource.action" in err.message


def test_rule_scope_outside_ceiling_is_rejected(tmp_path: Path) -> None:
    """A rule may not grant a scope beyond the ceiling of one of its classes."""
    text = BASE.replace("crm:customer.pii.read]\n    when", "crm:customer.pii.write]\n    when")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "crm:customer.pii.write"), "fraud-freeze")
    assert "'crm:customer.pii.write' is outside the ceiling of class 'fraud-detection'" in str(err)


def test_undeclared_cel_variable_is_rejected(tmp_path: Path) -> None:
    """A condition may only read the variables its rule kind provides."""
    text = BASE.replace("when: risk.agent >= 0.7", "when: signal.severity >= 0.7")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "signal.severity"), "no-pii")
    assert err.message == ("CEL expression references 'signal', which deny rules do not provide;"
                           " available: agent, now, request, risk")
    text = BASE.replace('when: signal.kind == "behaviour_anomaly"', "when: risk.agent > 0.5")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "risk.agent > 0.5"), "revoke-anomaly")
    assert "'risk', which revocation rules do not provide" in err.message


def test_comprehension_variables_are_not_undeclared(tmp_path: Path) -> None:
    """Loop variables bound by CEL macros are not mistaken for context variables."""
    text = BASE.replace("when: risk.agent >= 0.7",
                        "when: request.resources.exists(r, r.startsWith('vip-'))")
    assert load_policy(write(tmp_path, text)).deny_rules[0].when.variables == {"request"}


@pytest.mark.parametrize("value", ["20x", "0s", "-5", "1.5h", "true", "''"])
def test_bad_duration_is_rejected(tmp_path: Path, value: str) -> None:
    """Durations are positive ints of seconds or <n>s/m/h/d."""
    text = BASE.replace("max_duration: 20s", f"max_duration: {value}")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, f"max_duration: {value}"), "fraud-freeze")
    assert "bad duration" in err.message and "15m" in err.message


@pytest.mark.parametrize(("value", "seconds"), [
    ("20s", 20), ("15m", 900), ("2h", 7200), ("1d", 86400), (45, 45), ("90", 90),
    ("0s", None), (0, None), (True, None), ("1.5h", None), ("20x", None), (None, None),
])
def test_parse_duration(value: object, seconds: int | None) -> None:
    """Durations parse to positive seconds; anything else is None."""
    assert parse_duration(value) == seconds


def test_rule_duration_above_default_is_rejected(tmp_path: Path) -> None:
    """A rule may not promise more than defaults.max_duration allows."""
    text = BASE.replace("max_duration: 20s", "max_duration: 1h")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "max_duration: 1h"), "fraud-freeze")
    assert err.message.startswith("max_duration 1h exceeds defaults.max_duration 15m")


def test_duplicate_rule_ids_are_rejected_across_kinds(tmp_path: Path) -> None:
    """Rule ids are unique across escalation, deny and revocation rules."""
    text = BASE.replace("id: revoke-anomaly", "id: fraud-freeze")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "id: fraud-freeze", 2), "fraud-freeze")
    assert f"first defined at {path}:{line_of(text, 'id: fraud-freeze')}" in err.message


def test_duplicate_agent_ids_are_rejected(tmp_path: Path) -> None:
    """Two agents may not share an agent_id."""
    agent = BASE[BASE.index("  - agent_id"):]
    text = BASE + agent
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "agent_id: fraud-detector-7", 2), None)
    assert "duplicate agent_id 'fraud-detector-7'" in err.message


def test_unknown_agent_class_is_rejected(tmp_path: Path) -> None:
    """Rules and agents may only name defined classes."""
    text = BASE.replace("    agent_classes: [fraud-detection]", "    agent_classes: [fraud]")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "agent_classes: [fraud]"), "fraud-freeze")
    assert "unknown agent class 'fraud'; defined: fraud-detection" in err.message
    text = BASE.replace("    agent_class: fraud-detection", "    agent_class: reporting")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "agent_class: reporting"), None)


def test_per_agent_ceiling_is_rejected(tmp_path: Path) -> None:
    """An agent entry may not set its own ceiling: it comes from the class."""
    text = BASE + "    ceiling: ['*']\n"
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "ceiling: ['*']"), None)
    assert "comes from the agent class" in err.message


def test_agent_field_errors_point_at_the_field(tmp_path: Path) -> None:
    """Wire-contract violations in an agent entry name the field and its line."""
    text = BASE.replace('version: "3.2"', "version: 3.2")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "version: 3.2"), None)
    assert "model.version" in err.message and "valid string" in err.message


@pytest.mark.parametrize(("old", "new", "message"), [
    ("apiVersion: permbroker/v1\nkind: Policy", "apiVersion: permbroker/v2\nkind: Policy",
     "unknown apiVersion 'permbroker/v2'; expected permbroker/v1"),
    ("kind: Agents", "kind: Agent", "unknown kind 'Agent'; expected Policy or Agents"),
])
def test_unknown_api_version_or_kind(tmp_path: Path, old: str, new: str, message: str) -> None:
    """Only apiVersion permbroker/v1 and kinds Policy and Agents are accepted."""
    text = BASE.replace(old, new)
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, new.splitlines()[0]), None)
    assert err.message == message


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    """A key given twice in one mapping is an error, not a silent overwrite."""
    text = BASE.replace("    max_duration: 20s", "    max_duration: 20s\n    max_duration: 10s")
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, "max_duration: 10s"), None)
    assert "duplicate key 'max_duration'" in err.message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error is reported with its line."""
    text = BASE.replace("reason: risky agent", "reason: [risky agent")
    err, path = load_error(tmp_path, text)
    assert err.file == str(path) and err.line is not None
    assert "invalid YAML" in err.message


def test_bundle_without_policy_document_is_rejected(tmp_path: Path) -> None:
    """A bundle must hold exactly one Policy document."""
    (tmp_path / "agents.yaml").write_text(BASE[BASE.index("---\n") + 4:])
    with pytest.raises(PolicyError, match="no 'kind: Policy' document"):
        load_policy(tmp_path)
    (tmp_path / "a.yaml").write_text(BASE)
    (tmp_path / "b.yaml").write_text(BASE[:BASE.index("---\n")])
    with pytest.raises(PolicyError, match="a second 'kind: Policy' document") as info:
        load_policy(tmp_path)
    assert info.value.file == str(tmp_path / "b.yaml")


def test_empty_bundle_directory_is_rejected(tmp_path: Path) -> None:
    """A directory without .yaml files is not a bundle."""
    with pytest.raises(PolicyError, match=r"no \.yaml files"):
        load_policy(tmp_path)


def test_revision_is_stable_and_tracks_content(tmp_path: Path) -> None:
    """The revision depends on file names and bytes only, not on where the bundle lives."""
    first, second = tmp_path / "one", tmp_path / "two"
    shutil.copytree(FRAUD, first)
    shutil.copytree(FRAUD, second)
    revision = load_policy(first).revision
    assert load_policy(first).revision == revision == load_policy(second).revision
    (second / "agents.yaml").write_text((second / "agents.yaml").read_text() + "# edited\n")
    assert load_policy(second).revision != revision
    (first / "agents.yaml").rename(first / "people.yaml")
    assert load_policy(first).revision != revision
