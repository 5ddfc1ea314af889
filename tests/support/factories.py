"""Events the integration and fault suites send: a request the fraud policy grants, an anomaly.

Imports schemas.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from schemas.events import EscalationRequested, RiskObserved, WireModel


def fraud_request(agent_id: str, **overrides: object) -> EscalationRequested:
    """A request the fraud policy grants (freeze + PII on two accounts)."""
    fields: dict[str, object] = {
        "request_id": f"req-{uuid.uuid4()}",
        "agent_id": agent_id,
        "scopes": ("payments:accounts.freeze", "crm:customer.pii.read"),
        "resources": ("acct-1", "acct-2"),
        "duration_s": 900,
        "reason": "fraud pattern",
        "confidence": 0.95,
        "risk_score": 0.93,
        "requested_at": datetime.now(UTC),
    }
    fields.update(overrides)
    return EscalationRequested.model_validate(fields)


def anomaly(agent_id: str, severity: float = 0.95) -> RiskObserved:
    """A behaviour anomaly about ``agent_id`` that the fraud policy revokes on."""
    return RiskObserved(
        signal_id=f"sig-{uuid.uuid4()}",
        subject_agent_id=agent_id,
        kind="behaviour_anomaly",
        severity=severity,
        source="test-monitor",
        detail="out of pattern",
        observed_at=datetime.now(UTC),
    )


def ids(events: list[WireModel], attr: str) -> set[str]:
    """The set of one attribute over events."""
    return {str(getattr(e, attr)) for e in events}
