"""Operator SDK: revoke every agent a selector names, in one audited operation, after a dry run.

Imports adapters, core (selection, grants), sdk.operator, config, schemas.

``plan`` is the dry run: the agents the selector names in the registry (and the policy bundle's
agents that are not registered) and their live grants in the Redis view, each with its absolute
expiry and time left. ``revoke_selected`` plans the same way, records the operation on the audit
topic (selector, operator, agents, grant ids), then publishes one operator revocation signal per
agent, signed with the operator's key and keyed by the agent id (so per-agent ordering holds),
in one batch, and waits until a worker applied each one. A revocation is never undone.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.edge import Trust
from broker.adapters.kafka.registry_view import read_registry
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.errors import BrokerError
from broker.grants.decide import derive_id
from broker.grants.selection import Selection, Selector, select
from broker.policy import load_policy
from broker.sdk.operator.client import (
    AuditWatcher,
    Revocation,
    operator_publisher,
    operator_signal,
    revocation_of,
)
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, GrantIssued

SELECTOR_REVOKE = "revocation.selector"


@dataclass(frozen=True)
class SelectorRevocation:
    """What one selector revocation planned and what the workers revoked."""

    operation_id: str
    plan: Selection
    revocations: tuple[Revocation, ...]

    @property
    def revoked_grant_ids(self) -> tuple[str, ...]:
        """Every grant the workers reported revoked, sorted."""
        return tuple(sorted(g for r in self.revocations for g in r.grant_ids))


def profiles(settings: Settings, kafka: KafkaAccess, trust: Trust) -> list[AgentProfile]:
    """Registered agents' profiles, plus the policy bundle's agents not in the registry."""
    registered = {r.agent_id: r.profile for r in read_registry(kafka, trust).records()}
    try:
        seeded = load_policy(settings.policy_path).agents()
    except BrokerError:
        seeded = ()
    return [*registered.values(), *(p for p in seeded if p.agent_id not in registered)]


async def _grants(settings: Settings, agents: list[str] | None,
                  now: datetime) -> dict[str, list[GrantIssued]]:
    store = RedisGrantStore.from_url(settings.redis_url)
    try:
        holders = agents if agents is not None else await store.agents_with_grants()
        return {a: await store.active_grants(a, now) for a in holders}
    finally:
        await store.aclose()


def plan(settings: Settings, kafka: KafkaAccess, selector: Selector, trust: Trust,
         now: datetime | None = None) -> Selection:
    """The dry run: what ``revoke_selected`` would revoke now (StoreUnavailable, BusError)."""
    now = now or datetime.now(UTC)
    known = profiles(settings, kafka, trust)
    named = [p.agent_id for p in known if selector.profile_matches(p)] \
        if selector.needs_profile else None
    grants = asyncio.run(_grants(settings, named, now))
    return select(selector, known, grants, now)


def operation_audit(op_id: str, selection: Selection, reason: str, operator: str) -> AuditRecord:
    """The audit record of one selector revocation (no resources: they are sensitive)."""
    return AuditRecord(
        audit_id=derive_id("audit-selector", op_id), kind=SELECTOR_REVOKE, agent_id=None,
        occurred_at=selection.at, subject_id=op_id, outcome="requested",
        reasons=(f"{operator} revokes {len(selection.targets)} agent(s) selected by "
                 f"{selection.selector.describe()}: {reason}",),
        inputs={"operator": operator, "selector": selection.selector.criteria(),
                "agents": [t.agent_id for t in selection.targets],
                "grant_ids": list(selection.grant_ids),
                "expires_at": {g.grant_id: g.expires_at.isoformat()
                               for t in selection.targets for g in t.grants}},
    )


def revoke_selected(settings: Settings, kafka: KafkaAccess, selector: Selector, reason: str, *,
                    operator: str, trust: Trust, timeout: float = 60.0,
                    publisher: Publisher | None = None) -> SelectorRevocation:
    """Revoke every agent ``selector`` names; returns once workers applied each revocation.

    ``publisher`` signs for ``operator`` (default: this operator's key; the HTTP API passes one
    that relays the calling operator's assertion).
    """
    selection = plan(settings, kafka, selector, trust)
    op_id = f"sel-{uuid.uuid4()}"
    if not selection.targets:
        return SelectorRevocation(op_id, selection, ())
    publisher = publisher or operator_publisher(kafka, f"/operators/{operator}", settings)
    publisher.publish(topics.AUDIT_RAW.name, operation_audit(op_id, selection, reason, operator))
    detail = f"{reason} (selector {selector.describe()}; operation {op_id})"[:2000]
    signals = [operator_signal(t.agent_id, detail, operator) for t in selection.targets]
    watcher = AuditWatcher(kafka, trust=trust)
    try:
        publisher.publish_many(topics.RISK.name, signals)
        done = tuple(revocation_of(s, watcher.wait(s.signal_id, timeout)) for s in signals)
    finally:
        watcher.close()
    return SelectorRevocation(op_id, selection, done)
