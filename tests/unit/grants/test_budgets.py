"""Usage budgets, pure parts: the loader's checks, budgets carried on the grant, events, audits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.grants.budgets import (
    BUDGET_RULE,
    Use,
    cause_of,
    exhausted_reason,
    revoked_for,
    use_audit,
)
from broker.grants.decide import AgentState, decide
from broker.policy import RiskContext, load_policy
from schemas.events import EscalationRequested, GrantIssued, GrantUsed
from tests.support.policy_files import BASE, assert_at, line_of, load_error, write

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
BUDGETED = BASE.replace("    max_duration: 20s\n", "    max_duration: 20s\n    budgets:\n"
                        "      payments:accounts.freeze: 3\n      crm:customer.pii.read: 50\n", 1)


def test_rule_budgets_load_in_declaration_order(tmp_path: Path) -> None:
    """budgets: {scope: n} on an escalation rule is kept as (scope, n) pairs."""
    policy = load_policy(write(tmp_path, BUDGETED))
    assert policy.escalation_rules[0].budgets == ((FREEZE, 3), (PII, 50))


@pytest.mark.parametrize(("bad", "needle", "message"), [
    ("payments:accounts.freeze: 0", "freeze: 0", "whole number of uses from 1"),
    ("payments:accounts.freeze: three", "freeze: three", "got 'three'"),
    ("payments:accounts.close: 2", "close: 2", "not one of this rule's scopes"),
])
def test_bad_budgets_name_file_line_and_rule(tmp_path: Path, bad: str, needle: str,
                                             message: str) -> None:
    """A budget of 0, not a number, or for a scope the rule does not grant is refused there."""
    text = BUDGETED.replace("payments:accounts.freeze: 3", bad)
    err, path = load_error(tmp_path, text)
    assert_at(err, path, line_of(text, needle), "fraud-freeze")
    assert message in err.message


def _request(**extra: object) -> EscalationRequested:
    return EscalationRequested.model_validate({
        "request_id": "req-1", "agent_id": "fraud-detector-7", "scopes": [FREEZE, PII],
        "resources": ["acct-1"], "duration_s": 10, "reason": "ring", "confidence": 0.95,
        "requested_at": NOW, **extra})


def test_the_grant_carries_the_granting_rules_budgets_and_the_case(tmp_path: Path) -> None:
    """Budgets of the granted scopes, and the request's case id, are on grant.issued."""
    policy = load_policy(write(tmp_path, BUDGETED))
    request = _request(case_id="case-42")
    agent = policy.agent("fraud-detector-7")
    evaluation = policy.evaluate(request, agent, RiskContext(), NOW)
    outcome = decide(request, evaluation, agent=agent, state=AgentState(), received_at=NOW,
                     now=NOW)
    assert outcome.grant is not None
    assert outcome.grant.budgets == {FREEZE: 3, PII: 50}
    assert outcome.grant.case_id == "case-42"


def test_without_budgets_a_grant_has_none(tmp_path: Path) -> None:
    """A rule without budgets issues unlimited grants (the field stays empty: additive)."""
    policy = load_policy(write(tmp_path, BASE))
    agent = policy.agent("fraud-detector-7")
    request = _request()
    outcome = decide(request, policy.evaluate(request, agent, RiskContext(), NOW), agent=agent,
                     state=AgentState(), received_at=NOW, now=NOW)
    assert outcome.grant is not None and outcome.grant.budgets == {}


def _used(outcome: str = "consumed", used: int = 3) -> GrantUsed:
    return GrantUsed(use_id="use-3", agent_id="fraud-detector-7", grant_id="grant-1",
                     scope=FREEZE, resource="acct-1", service="payments-api", outcome=outcome,
                     used=used, limit=3, used_at=NOW)


def test_use_results_and_the_revocation_they_cause() -> None:
    """The last unit ends the grant: one cause id per grant and scope, the reason says why."""
    assert Use("ok", 3, 3).last and Use("dup", 3, 3).last
    assert not Use("ok", 2, 3).last and not Use("exhausted", 3, 3).last
    assert not Use("exhausted", 3, 3).counted
    grant = GrantIssued(grant_id="grant-1", agent_id="fraud-detector-7", request_id="req-1",
                        scopes=(FREEZE,), resources=("acct-1",), issued_at=NOW,
                        expires_at=NOW + timedelta(minutes=5), policy_revision="r",
                        rules=("fraud-freeze",), budgets={FREEZE: 3})
    revoked = revoked_for(grant, _used(), NOW)
    assert revoked.reason == "budget exhausted: 3 of 3 payments:accounts.freeze used"
    assert revoked.rule == BUDGET_RULE and revoked.expires_at == grant.expires_at
    assert cause_of(_used()) == cause_of(_used("refused")) == revoked.cause_event_id
    assert exhausted_reason(50, 50, PII) == "budget exhausted: 50 of 50 crm:customer.pii.read used"


def test_use_audit_keeps_the_resource_where_the_redactor_hashes_it() -> None:
    """The audit of a use holds its resource under grant.resources, not in the use itself."""
    record = use_audit(_used(used=1), "reported", NOW)
    assert record.kind == "grant.used" and record.outcome == "consumed"
    assert record.inputs["grant"] == {"grant_id": "grant-1", "resources": ["acct-1"]}
    assert "resource" not in record.inputs["use"]  # type: ignore[operator]
    assert record.reasons == ("use 1 of 3 of payments:accounts.freeze on acct-1 by payments-api",)
    assert use_audit(_used(used=1), "reported", NOW).audit_id == record.audit_id
