"""The unusual-resources detector on the live stack: reported checks build each agent's usual
resources; a sweep over many new ones raises a signed behaviour signal with its evidence, and
the policy's revocation rule revokes the agent; a control agent doing its usual work is not
flagged."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.adapters.crypto.service_key import ensure_service
from broker.config import Settings
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.usage import UsageReporter
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AuditRecord, GrantRevoked, RiskObserved
from tests.support.identities import agent_client
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
FREEZE = "payments:accounts.freeze"
WAIT = 90.0
USUAL = tuple(f"acct-u{n}" for n in range(6))


def _checks_audited(audit: Tap, agent: str, count: int) -> None:
    audit.wait_for(AuditRecord, lambda r: r.kind == "check.performed" and r.agent_id == agent,
                   count=count, timeout=WAIT)


def test_a_sweep_over_new_resources_is_signalled_and_revoked_a_control_is_not(
    worker: object, settings: Settings, agents: Callable[[str], str],
    tap: Callable[[str], Tap],
) -> None:
    """Both agents check their 6 usual accounts; the control then checks them 30 times more
    (not flagged), the suspect sweeps 30 accounts it never used: one signal (30 of 36 checks
    new, 6 known), the revocation rule revokes its grant."""
    suspect, control = agents("n"), agents("n")  # the class the test detectors watch
    risk, grants, audit = (tap(t) for t in (topics.RISK.name, topics.GRANTS.name,
                                            topics.AUDIT_RAW.name))
    with agent_client(settings, suspect) as client:
        granted = client.request_escalation(
            [FREEZE], resources=[USUAL[0]], duration_s=300, reason="review",
            confidence=0.95, risk_score=0.5)
    assert granted.outcome == "granted" and granted.grant_id, granted.reasons
    reporter = UsageReporter.connect(role_access(settings, topics.SERVICE),
                                     service=ensure_service(settings, "ledger-usage"),
                                     interval_s=3600)  # flushed by hand
    try:
        for agent in (suspect, control):
            for resource in USUAL:
                reporter.record(agent, FREEZE, resource, Verdict(True, "usual work"))
        reporter.flush()
        _checks_audited(audit, suspect, len(USUAL))
        _checks_audited(audit, control, len(USUAL))
        for n in range(30):
            reporter.record(control, FREEZE, USUAL[n % len(USUAL)], Verdict(True, "usual"))
        reporter.flush()
        _checks_audited(audit, control, len(USUAL) + 30)  # detection precedes the audit
        for n in range(30):
            reporter.record(suspect, FREEZE, f"acct-x{n:03d}", Verdict(False, "no grant"))
        reporter.flush()
    finally:
        reporter.close()
    [signal, *again] = risk.wait_for(RiskObserved, lambda s: s.subject_agent_id == suspect,
                                     timeout=WAIT)
    assert all(s == signal for s in again)  # at least once, always the same signal
    assert signal.kind == "behaviour_anomaly" and signal.severity == 0.9
    evidence = signal.evidence
    assert evidence["detector"] == "unusual_resources"
    assert (evidence["checks"], evidence["new_checks"], evidence["known_resources"]) == (
        len(USUAL) + 30, 30, len(USUAL))
    [revoked, *_] = grants.wait_for(GrantRevoked, lambda e: e.grant_id == granted.grant_id,
                                    timeout=WAIT)
    assert revoked.rule == "revoke-on-unusual-resources", revoked
    assert not risk.events(RiskObserved, lambda s: s.subject_agent_id == control)
