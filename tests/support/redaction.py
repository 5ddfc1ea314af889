"""A request carrying secrets and its decided audit record: what redaction tests redact.

Imports broker (policy, grants), schemas.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.grants.decide import AgentState, decide
from broker.policy import RiskContext, load_policy
from schemas.events import AuditRecord, EscalationRequested

KEY = b"\x01" * 32
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
POLICY = load_policy("policies/fraud")
JWT = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJmcmF1ZCJ9.c2lnbmF0dXJl"
PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIL\n-----END PRIVATE KEY-----"


def request(**changes: object) -> EscalationRequested:
    """The fraud agent's request, with a token and an account number in its free text."""
    fields: dict[str, object] = {
        "request_id": "req-1", "agent_id": "fraud-detector-7",
        "scopes": ("payments:accounts.freeze", "crm:customer.pii.read"),
        "resources": ("acct-4411-0923", "acct-4411-7710"), "duration_s": 900,
        "reason": "ring around acct-4411-0923", "case_id": "case-17", "confidence": 0.95,
        "risk_score": 0.93, "signals": {"api_token": "sk-live-123", "note": f"jwt {JWT}"},
        "requested_at": NOW,
    }
    return EscalationRequested.model_validate(fields | changes)


def decided_record(req: EscalationRequested) -> AuditRecord:
    """The audit record the broker writes when it decides ``req`` under the fraud policy."""
    agent, risk = POLICY.agent(req.agent_id), RiskContext(request=req.risk_score)
    return decide(req, POLICY.evaluate(req, agent, risk, NOW), agent=agent, state=AgentState(),
                  received_at=NOW, now=NOW, risk=risk).audit
