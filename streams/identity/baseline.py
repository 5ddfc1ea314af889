"""Baseline entitlements in the worker: state each agent's baseline on the grant topics.

Imports broker, schemas and streams.

Every registry change states the agent's entitlement anew (active with its class's baseline,
or withdrawn), signed like every broker record, on the grant topics the views follow, after the
change's revocations (same agent key, so a view applies them in that order), and audits it.
A worker that opens states every registered agent's entitlement again (re-announcement): a
view that starts after the grant topic's retention dropped the original statement, or after a
policy changed a class's baseline, still finds the current one. Statements are deterministic
(same record and policy, same id and content) and views keep the newest registry revision.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime

from broker.delivery.consistency import ConsistencyToken
from broker.identity.baseline import baseline_audit, entitlement_of
from broker.identity.lifecycle import registration_ends
from schemas.events import AgentRecord, BaselineEntitlement
from streams.identity.gate import IdentityGate
from streams.worker import WorkerContext

log = logging.getLogger("permbroker.identity")
BATCH = 500  # statements per publish when re-announcing


class Baselines:
    """States baseline entitlements from registry records and the policy's classes."""

    def __init__(self, ctx: WorkerContext, gate: IdentityGate) -> None:
        self.ctx = ctx
        self.gate = gate

    def _statement(self, record: AgentRecord) -> BaselineEntitlement:
        profile = record.profile  # the baseline of its class in its tenant's bundle
        baseline = self.gate.classes_of(profile.tenant).get(profile.agent_class, ((), ()))[0]
        policy = self.ctx.policy_for(profile)
        return entitlement_of(record, baseline, policy_revision=policy.revision,
                              until=registration_ends(record, policy.lifecycle))

    async def state(self, record: AgentRecord, at: datetime) -> ConsistencyToken | None:
        """Publish and audit the entitlement ``record`` gives; where it landed."""
        event = self._statement(record)
        token = await self.ctx.emit_grants((event, None))
        await self.ctx.audit(baseline_audit(event, at))
        return token

    async def announce_all(self) -> int:
        """State every registered agent's entitlement again, in batches; how many."""
        records = self.gate.registry.records()
        now = datetime.now(UTC)
        for start in range(0, len(records), BATCH):
            events = [self._statement(r) for r in records[start:start + BATCH]]
            await self.ctx.retrying("baseline", functools.partial(self._publish, events, now))
        log.info("stated the baseline entitlement of %d agent(s)", len(records))
        return len(records)

    async def _publish(self, events: list[BaselineEntitlement], at: datetime) -> None:
        await self.ctx.emit_grants(*((e, None) for e in events))
        await self.ctx.audit(*(baseline_audit(e, at) for e in events))
