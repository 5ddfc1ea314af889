"""What the console pages show, read from the API's runtime. L3.

Imports broker (adapters.redis, adapters.kafka, audit, sdk.operator) and the API's runtime: the
same stores, views and audit code as the CLI and the JSON API, nothing of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.adapters.audit import check as audit_check
from broker.adapters.audit import log as audit_log
from broker.adapters.redis.approvals import ApprovalStore
from broker.adapters.redis.identity import IdentityStore
from broker.api.routes_operator import status_json
from broker.api.runtime import Runtime
from broker.audit.views import ActiveGrant, grants_as_of
from broker.errors import BrokerError, PolicyError
from broker.identity.inventory import InventoryRow, inventory_rows
from broker.policy import load_policy
from broker.sdk.operator.approvals import held_row
from schemas import topics
from schemas.events import AgentKey, AuditRecord, GrantIssued

AUDIT_LOOKBACK = timedelta(hours=6)  # how far back the audit page reads the sealed log
FEED_LOOKBACK = timedelta(minutes=15)  # the decisions page: the last quarter of an hour
FEED_LIMIT = 200
FEED_KINDS = frozenset({"escalation.decided", "identity.rejected", "message.dead_lettered"})


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
class AgentRow:
    """An agent of the inventory, with its keys (id, status, added) and its live risk."""

    row: InventoryRow
    keys: tuple[AgentKey, ...]
    risk: float


async def agents(runtime: Runtime, now: datetime) -> list[AgentRow]:
    """The inventory (``permbroker inventory``): every registered agent, what it holds now,
    when it last acted, its keys and their age, its live risk and flags."""
    if runtime.store is None or runtime.registry is None:
        raise BrokerError("the API has not started its readers yet")
    records = {r.agent_id: r for r in runtime.registry.records()}
    store = runtime.store
    held = {a: await store.active_grants(a, now) for a in records}
    acted = await IdentityStore(store.client).last_acted()
    try:
        policy = load_policy(runtime.settings.policy_path)
        classes, lifecycle = policy.classes, policy.lifecycle
    except (PolicyError, OSError):
        # The API may run without the bundle: baselines and lifecycle flags are then not shown.
        classes, lifecycle = {}, None
    max_age = timedelta(seconds=runtime.settings.agent_key_max_age_s)
    rows = inventory_rows(list(records.values()), classes, held, acted, now=now,
                          key_max_age=max_age, lifecycle=lifecycle)
    return [AgentRow(r, tuple(records[r.agent_id].keys), await store.live_risk(r.agent_id))
            for r in rows]


def chain_status(runtime: Runtime) -> audit_check.Verification:
    """Every partition's hash chain, sequence and signed digests of the sealed audit (as
    ``permbroker audit verify``, without the raw topic's coverage, which the API may not read)."""
    marks = audit_log.watermarks(runtime.kafka, topics.AUDIT.name)
    keys = audit_check.public_key_files(runtime.settings, [])
    stored = audit_log.read_topic(runtime.kafka, trust=runtime.verifier())
    return audit_check.verify(stored, keys, source=f"topic {topics.AUDIT.name}",
                              from_start=all(low == 0 for low, _ in marks.values()))


@dataclass(frozen=True)
class AuditView:
    """One agent's audit: its timeline, and what it could do at the chosen instant."""

    agent_id: str
    records: list[AuditRecord]
    at: datetime
    active: list[ActiveGrant]
    start: datetime
    end: datetime


def audit_records(runtime: Runtime, keep: Callable[[AuditRecord], bool], since: datetime
                  ) -> list[AuditRecord]:
    """The sealed audit records since ``since`` that the broker signed and ``keep`` keeps."""
    stored = audit_log.read_topic(runtime.kafka, since=since, trust=runtime.verifier())
    out = []
    for s in stored:
        if s.refusal is not None:
            continue
        try:
            record = s.record()
        except BrokerError:
            continue
        if keep(record):
            out.append(record)
    return out


def of_agent(runtime: Runtime, agent_id: str, now: datetime) -> list[AuditRecord]:
    """One agent's audit records (the last AUDIT_LOOKBACK)."""
    return audit_records(runtime, lambda r: r.agent_id == agent_id, now - AUDIT_LOOKBACK)


def decisions(runtime: Runtime, now: datetime) -> list[AuditRecord]:
    """The latest decisions, identity rejections and dead letters, newest first."""
    found = audit_records(runtime, lambda r: r.kind in FEED_KINDS, now - FEED_LOOKBACK)
    return sorted(found, key=lambda r: r.occurred_at, reverse=True)[:FEED_LIMIT]


def latency_ms(record: AuditRecord) -> float | None:
    """A decision's latency: from Kafka's append of the request (the ``received_at`` the
    decision recorded among its inputs) to the decision (the record's time); None if unknown."""
    received = record.inputs.get("received_at")
    if record.kind != "escalation.decided" or not isinstance(received, str):
        return None
    try:
        appended = datetime.fromisoformat(received)
    except ValueError:
        return None
    return (record.occurred_at - appended).total_seconds() * 1000


def audit_view(records: list[AuditRecord], agent_id: str, at: datetime | None,
               now: datetime) -> AuditView:
    """The timeline and the grants active ``at`` (default: now), replayed from the records."""
    start = min((r.occurred_at for r in records), default=now - timedelta(minutes=1))
    instant = at or now
    active = [g for g in grants_as_of(records, instant) if g.agent_id == agent_id]
    return AuditView(agent_id, records, instant, active, start, max(now, instant))
