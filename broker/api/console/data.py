"""What the console pages show, read from the API's runtime. L3.

Imports broker (adapters.redis, adapters.kafka, audit, sdk.operator) and the API's runtime: the
same stores, views and audit code as the CLI and the JSON API, nothing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.adapters.audit import log as audit_log
from broker.adapters.redis.approvals import ApprovalStore
from broker.api.routes_operator import status_json
from broker.api.runtime import Runtime
from broker.audit.views import ActiveGrant, grants_as_of
from broker.errors import BrokerError
from broker.sdk.operator.approvals import held_row
from schemas.events import AuditRecord, GrantIssued

AUDIT_LOOKBACK = timedelta(hours=6)  # how far back the audit page reads the sealed log


@dataclass(frozen=True)
class GrantRow:
    """One live grant with its countdown."""

    grant: GrantIssued
    left_s: float
    percent: int  # of its whole life still left: the countdown bar's width

    @property
    def rules(self) -> str:
        """The rules that produced (and clamped) it."""
        return ", ".join(self.grant.rules)


async def live_grants(runtime: Runtime, now: datetime) -> list[GrantRow]:
    """Every active grant in Redis (the broker's view), soonest expiry first."""
    if runtime.store is None:
        raise BrokerError("the API is not connected to Redis yet")
    grants = [g for agent in await runtime.store.agents_with_grants()
              for g in await runtime.store.active_grants(agent, now)]
    rows = []
    for g in sorted(grants, key=lambda g: (g.expires_at, g.grant_id)):
        life = max((g.expires_at - g.issued_at).total_seconds(), 1e-3)
        left = max((g.expires_at - now).total_seconds(), 0.0)
        rows.append(GrantRow(g, round(left, 1), min(100, round(100 * left / life))))
    return rows


def revocations(runtime: Runtime, now: datetime) -> dict[str, Any]:
    """Revocations seen and each enforcement point's acknowledgements (silent ones flagged)."""
    return status_json(runtime.metrics.status(), now)


async def approvals(runtime: Runtime, now: datetime) -> list[dict[str, Any]]:
    """Held requests with their policy reason, quorum and the votes so far."""
    if runtime.store is None:
        raise BrokerError("the API is not connected to Redis yet")
    held = await ApprovalStore(runtime.store.client).listed()
    rows = [held_row(h, now) for h in held if h.status == "pending"]
    for row in rows:
        row["approvals"] = sorted(a for a, v in row["votes"].items() if v == "approve")
    return rows


@dataclass(frozen=True)
class AuditView:
    """One agent's audit: its timeline, and what it could do at the chosen instant."""

    agent_id: str
    records: list[AuditRecord]
    at: datetime
    active: list[ActiveGrant]
    start: datetime
    end: datetime


def audit_records(runtime: Runtime, agent_id: str, now: datetime) -> list[AuditRecord]:
    """The agent's sealed audit records the broker signed (bad signatures left out)."""
    stored = audit_log.read_topic(runtime.kafka, since=now - AUDIT_LOOKBACK,
                                  trust=runtime.verifier())
    out = []
    for s in stored:
        if s.refusal is not None:
            continue
        try:
            record = s.record()
        except BrokerError:
            continue
        if record.agent_id == agent_id:
            out.append(record)
    return out


def audit_view(records: list[AuditRecord], agent_id: str, at: datetime | None,
               now: datetime) -> AuditView:
    """The timeline and the grants active ``at`` (default: now), replayed from the records."""
    start = min((r.occurred_at for r in records), default=now - timedelta(minutes=1))
    instant = at or now
    active = [g for g in grants_as_of(records, instant) if g.agent_id == agent_id]
    return AuditView(agent_id, records, instant, active, start, max(now, instant))
