"""Events the integration and fault suites send: a request the fraud policy grants, an anomaly;
and the fraud agent's decisions, commits and revocations the grant store's contract tests share.

Imports broker and schemas.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from broker.adapters.ports import NO_FENCE, UNLIMITED, Committed, Fence, GrantStore, RateLimit
from broker.grants.decide import AgentState, Outcome, decide
from broker.grants.revocation import RevocationPlan, plan_revocation
from broker.policy import RiskAction, RiskContext, load_policy
from schemas.events import EscalationRequested, RiskObserved, ScopeDenial, WireModel


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


# --- the grant store's contract cases ---------------------------------------------------------
POLICY = load_policy(Path(__file__).resolve().parents[2] / "policies" / "fraud")
AGENT = "fraud-detector-7"
FREEZE = "payments:accounts.freeze"
MARGIN_S = 600


def outcome(received_at: datetime, now: datetime | None = None, *, request_id: str = "",
            denied: bool = False) -> Outcome:
    """A fraud agent's freeze request decided at ``now``: granted for 20 s, or denied."""
    request = EscalationRequested(
        request_id=request_id or f"req-{uuid.uuid4()}", agent_id=AGENT, scopes=(FREEZE,),
        resources=("acct-1",), duration_s=900, reason="pattern", confidence=0.95,
        risk_score=0.85, requested_at=received_at)
    now = now or received_at
    evaluation = POLICY.evaluate(request, POLICY.agent(AGENT), RiskContext(request=0.85), now)
    blocked = ScopeDenial(scope="*", rule="test-denial", reason="denied") if denied else None
    return decide(request, evaluation, agent=POLICY.agent(AGENT), state=AgentState(),
                  received_at=received_at, now=now, blocked_by=blocked)


async def commit(store: GrantStore, out: Outcome, now: datetime, *,
                 received_at: datetime | None = None, fence: Fence = NO_FENCE,
                 rate: RateLimit = UNLIMITED) -> Committed:
    """Commit ``out`` at ``now`` for a request received at ``received_at`` (default ``now``)."""
    return await store.commit(out, received_at=received_at or now, now=now,
                              max_grant_s=POLICY.max_grant_duration_s, fence=fence, rate=rate)


def revocation(now: datetime, *, quarantine_s: int = 0, cause: str = "") -> RevocationPlan:
    action = RiskAction(revoke=True, rule="test-revoke", reason="risk",
                        quarantine_s=quarantine_s)
    return plan_revocation(cause or f"sig-{uuid.uuid4()}", AGENT, action, now=now,
                           max_grant_s=POLICY.max_grant_duration_s, margin_s=MARGIN_S)


async def built(store: GrantStore) -> datetime:
    now = await store.now()
    await store.mark_built(now)
    return now
