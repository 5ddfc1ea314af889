"""A request's ``valid_until``: decided after it, a request is denied ``request-expired``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.audit.replay import Decided, reproduce
from broker.grants.decide import REQUEST_EXPIRED, AgentState, Outcome, decide
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import EscalationDecided, EscalationRequested

POLICIES = Path(__file__).resolve().parents[3] / "policies"
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
FREEZE = "payments:accounts.freeze"
AGENT = "fraud-detector-7"


@pytest.fixture(scope="module")
def fraud() -> Policy:
    return load_policy(POLICIES / "fraud")


def request(valid_for_s: float | None) -> EscalationRequested:
    return EscalationRequested(
        request_id="req-deadline", agent_id=AGENT, scopes=(FREEZE,), resources=("acct-1",),
        duration_s=900, reason="pattern", confidence=0.95, risk_score=0.9, requested_at=T0,
        valid_until=None if valid_for_s is None else T0 + timedelta(seconds=valid_for_s))


def decide_at(policy: Policy, req: EscalationRequested, now: datetime,
              *, deadline: bool = True) -> Outcome:
    agent = policy.agent(AGENT)
    risk = RiskContext(request=req.risk_score)
    return decide(req, policy.evaluate(req, agent, risk, now), agent=agent, state=AgentState(),
                  received_at=T0, now=now, risk=risk, deadline=deadline)


def test_a_request_decided_within_its_deadline_is_granted(fraud: Policy) -> None:
    """Decided at (or before) ``valid_until``, the deadline changes nothing."""
    req = request(10)
    on_time = decide_at(fraud, req, T0 + timedelta(seconds=10))
    assert on_time.decision.outcome == "granted" and on_time.grant is not None
    assert REQUEST_EXPIRED not in on_time.decision.matched_rules


def test_a_request_decided_after_its_deadline_is_denied_request_expired(fraud: Policy) -> None:
    """One millisecond late: every scope denied with rule request-expired, no grant, audited
    with the inputs that reproduce it (replay decides it the same way)."""
    req = request(10)
    late = decide_at(fraud, req, T0 + timedelta(seconds=10, milliseconds=1))
    assert late.grant is None and late.decision.outcome == "denied"
    assert [d.rule for d in late.decision.denied] == [REQUEST_EXPIRED]
    assert late.decision.matched_rules == (REQUEST_EXPIRED,)
    assert "valid_until" in late.decision.reasons[0]
    assert late.audit.outcome == "denied" and late.audit.rules == (REQUEST_EXPIRED,)
    recorded = EscalationDecided.model_validate(late.audit.inputs["decision"])
    assert reproduce(Decided(late.audit, recorded), fraud) == late.decision


def test_a_request_without_deadline_is_decided_whenever_it_is_read(fraud: Policy) -> None:
    """No ``valid_until`` (older clients): decided as before (the grant's own expiry still
    bounds it: the shipped policy clamps it to 20 s)."""
    late = decide_at(fraud, request(None), T0 + timedelta(seconds=15))
    assert late.decision.outcome == "granted"


def test_a_held_request_s_final_decision_ignores_the_deadline(fraud: Policy) -> None:
    """``deadline=False`` (an approval's final decision): the pending notice answered in time."""
    late = decide_at(fraud, request(10), T0 + timedelta(seconds=15), deadline=False)
    assert late.decision.outcome == "granted"
