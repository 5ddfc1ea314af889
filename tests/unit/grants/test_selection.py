"""Revocation by selector, pure part: which agents and grants a selector names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.grants.selection import Selector, parse_labels, select
from schemas.events import AgentProfile, GrantIssued, ModelInfo

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _agent(agent_id: str, version: str, **extra: object) -> AgentProfile:
    return AgentProfile(agent_id=agent_id, agent_class=str(extra.pop("cls", "fraud-detection")),
                        owner=str(extra.pop("owner", "ops@example.com")),
                        model=ModelInfo(name="gbm", version=version), **extra)  # type: ignore[arg-type]


def _grant(agent_id: str, gid: str, seconds: int = 60, case: str | None = None) -> GrantIssued:
    return GrantIssued(grant_id=gid, agent_id=agent_id, request_id=f"r-{gid}",
                       scopes=("payments:accounts.freeze",), resources=("acct-1",),
                       issued_at=NOW - timedelta(seconds=5),
                       expires_at=NOW + timedelta(seconds=seconds), policy_revision="r",
                       rules=("x",), case_id=case)


PROFILES = [
    _agent("a1", "3.1"), _agent("a2", "3.2", labels={"team": "fraud"}),
    _agent("a3", "3.2", tenant="acme", cls="reporting"), _agent("a4", "3.2", owner="bob"),
]
GRANTS = {"a1": [_grant("a1", "g1", case="case-7")], "a2": [_grant("a2", "g2")],
          "a3": [_grant("a3", "g3"), _grant("a3", "g3-old", seconds=-1)],
          "x9": [_grant("x9", "g9", case="case-7")]}


def test_model_version_names_its_agents_and_their_live_grants() -> None:
    """Only agents on 3.2; expired grants are not listed; agents without grants still are."""
    sel = select(Selector(model_version="3.2"), PROFILES, GRANTS, NOW)
    assert [t.agent_id for t in sel.targets] == ["a2", "a3", "a4"]
    assert sel.grant_ids == ("g2", "g3")
    row = sel.as_json()["agents"][1]
    assert row["grants"] == [{"grant_id": "g3", "scopes": ["payments:accounts.freeze"],
                              "expires_at": (NOW + timedelta(seconds=60)).isoformat(),
                              "remaining_s": 60.0, "case_id": None}]


@pytest.mark.parametrize(("selector", "agents"), [
    (Selector(agent_id="a1"), ["a1"]),
    (Selector(agent_class="reporting"), ["a3"]),
    (Selector(tenant="acme"), ["a3"]),
    (Selector(owner="bob"), ["a4"]),
    (Selector(labels=(("team", "fraud"),)), ["a2"]),
    (Selector(model_version="3.2", labels=(("team", "fraud"),)), ["a2"]),
    (Selector(model_version="3.1", owner="bob"), []),
    (Selector(case_id="case-7"), ["a1", "x9"]),
    (Selector(case_id="case-7", model_version="3.1"), ["a1"]),
    (Selector(), []),
])
def test_every_criterion_must_hold(selector: Selector, agents: list[str]) -> None:
    """Criteria combine with AND; a case id names holders of that case's grants; none: nobody."""
    assert [t.agent_id for t in select(selector, PROFILES, GRANTS, NOW).targets] == agents


def test_labels_parse_as_key_value() -> None:
    """--label team=fraud; a malformed label is refused with its text."""
    assert parse_labels(["team=fraud", "env=prod"]) == (("team", "fraud"), ("env", "prod"))
    with pytest.raises(ValueError, match="'team'"):
        parse_labels(["team"])


def test_describe_and_criteria_list_only_what_was_given() -> None:
    """The audit and the CLI show the criteria given, nothing else."""
    sel = Selector(model_version="3.2", labels=(("team", "fraud"),))
    assert sel.criteria() == {"model_version": "3.2", "labels": {"team": "fraud"}}
    assert sel.describe() == "model_version=3.2, labels={'team': 'fraud'}"


def test_the_cli_refuses_an_empty_selector_and_a_revocation_without_reason() -> None:
    """`permbroker revoke` with no criterion, or no --reason for a real run, revokes nothing."""
    from typer.testing import CliRunner

    from broker.cli.main import app

    empty = CliRunner().invoke(app, ["revoke", "--dry-run"])
    assert empty.exit_code == 2 and "at least one selector" in empty.output
    bad = CliRunner().invoke(app, ["revoke", "--label", "team"])
    assert bad.exit_code == 1 and "key=value" in bad.output
    unexplained = CliRunner().invoke(app, ["revoke", "--model-version", "3.2"])
    assert unexplained.exit_code == 2 and "--reason is required" in unexplained.output


def test_agents_bundle_may_label_agents(tmp_path: Path) -> None:
    """labels: {team: fraud} on an agent of the Agents bundle lands on its profile."""
    from broker.policy import load_policy
    from tests.support.policy_files import BASE, write

    text = BASE.replace('    model: {name: fraud-gbm, version: "3.2"}',
                        '    model: {name: fraud-gbm, version: "3.2"}\n'
                        '    labels: {team: fraud, env: prod}')
    agent = load_policy(write(tmp_path, text)).agent("fraud-detector-7")
    assert agent is not None and agent.labels == {"team": "fraud", "env": "prod"}
    assert Selector(labels=(("team", "fraud"),)).profile_matches(agent)
