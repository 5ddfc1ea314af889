"""Usage budgets, the pure part: what a counted use means, reasons, revocation events, audits.

Imports broker.grants and schemas; no I/O, time passed in. The counting itself is atomic in
Redis (``broker.adapters.redis.budgets``); this module names the results and builds the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from broker.grants.decide import derive_id
from schemas.events import AuditRecord, GrantIssued, GrantRevoked, GrantUsed

BUDGET_RULE = "budget-exhausted"
UseStatus = Literal["ok", "dup", "exhausted", "gone", "unlimited"]


@dataclass(frozen=True)
class Use:
    """What the store said of one use: counted (ok/dup), refused (exhausted/gone), or free."""

    status: UseStatus
    used: int
    limit: int

    @property
    def counted(self) -> bool:
        """Counted now or by an earlier report of the same use id."""
        return self.status in ("ok", "dup")

    @property
    def last(self) -> bool:
        """This use took the last unit of the budget: the grant ends now."""
        return self.counted and self.used >= self.limit


def exhausted_reason(used: int, limit: int, scope: str) -> str:
    """'budget exhausted: 3 of 3 payments:accounts.freeze used'."""
    return f"budget exhausted: {used} of {limit} {scope} used"


def cause_of(event: GrantUsed) -> str:
    """The id of the exhaustion of one grant's budget of one scope (one per grant and scope)."""
    return derive_id("budget", f"{event.grant_id}\x1f{event.scope}", event.agent_id)


def revoked_for(grant: GrantIssued, event: GrantUsed, now: datetime) -> GrantRevoked:
    """The ``grant.revoked`` that ends a grant whose budget of ``event.scope`` is used up."""
    return GrantRevoked(
        grant_id=grant.grant_id, agent_id=grant.agent_id, revoked_at=now,
        expires_at=grant.expires_at, reason=exhausted_reason(event.used, event.limit, event.scope),
        rule=BUDGET_RULE, cause_event_id=cause_of(event),
    )


def use_audit(event: GrantUsed, verified: str, now: datetime) -> AuditRecord:
    """The audit record of one reported use; ``verified`` says what the store confirmed."""
    counted = f"use {event.used} of {event.limit} of {event.scope}"
    refused = exhausted_reason(event.used, event.limit, event.scope)
    reason = (f"{counted} on {event.resource or '*'} by {event.service}"
              if event.outcome == "consumed" else f"refused by {event.service}: {refused}")
    return AuditRecord(
        audit_id=derive_id("audit-use", f"{event.grant_id}\x1f{event.use_id}", event.agent_id),
        kind="grant.used", agent_id=event.agent_id, occurred_at=now, subject_id=event.grant_id,
        outcome=event.outcome, reasons=(reason,),
        # The resource sits where the redactor hashes resources (grant.resources); callers pass
        # it as ``also`` so the reason carries its HMAC too.
        inputs={"use": event.model_dump(mode="json", exclude={"resource"}),
                "grant": {"grant_id": event.grant_id,
                          "resources": [event.resource] if event.resource else []},
                "store": verified, "now": now.isoformat()},
    )
