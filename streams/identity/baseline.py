"""Baseline entitlements in the worker: state each agent's baseline on the grant topics.

Imports broker, schemas and streams.

Every registry change states the agent's entitlement anew (active with its class's baseline,
or withdrawn), signed like every broker record, on the grant topics the views follow, after the
change's revocations (same agent key, so a view applies them in that order), and audits it.
A worker that opens states every registered agent's entitlement again (re-announcement): a
view that starts after the grant topic's retention dropped the original statement, or after a
policy changed a class's baseline, still finds the current one. Statements are deterministic
(same record and policy, same id and content) and views keep the newest registry revision.

Re-announcing costs a signed record per agent on every grant topic, and its audit record, so a
worker that opens within ``RESTATED_FOR_S`` of another worker's complete re-announcement under
the same fingerprint (each tenant's policy revision and the grant topics statements go to)
skips it: the statements it would write are on the topics already, well inside their
retention. A worker that stops part way records nothing, so the next one states them all.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from datetime import UTC, datetime

from broker.delivery.consistency import ConsistencyToken
from broker.errors import BrokerError
from broker.identity.baseline import baseline_audit, entitlement_of
from broker.identity.lifecycle import registration_ends
from schemas.events import AgentRecord, BaselineEntitlement
from schemas.topics import DEFAULT_TENANT
from streams.identity.gate import IdentityGate
from streams.worker import WorkerContext

log = logging.getLogger("permbroker.identity")
BATCH = 500  # statements per publish when re-announcing
RESTATED_FOR_S = 3600  # a complete re-announcement spares the workers opening after it this long


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

    def fingerprint(self) -> str:
        """What every agent's statement depends on besides its registry record: each tenant's
        policy revision, and the grant topics statements go to."""
        tenancy = self.ctx.tenancy
        parts = [f"{DEFAULT_TENANT}={tenancy.default.revision}",
                 *(f"{t}={p.revision}" for t, p in sorted(tenancy.others.items())),
                 *self.ctx.routing.topics()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    async def announce_at_start(self) -> int:
        """``announce_all`` unless a worker completed one under this fingerprint less than
        ``RESTATED_FOR_S`` ago; how many were stated."""
        fingerprint = self.fingerprint()
        try:
            stated = await self.ctx.store.baselines_stated()
        except BrokerError as exc:  # cannot tell: state them (the cost, never a gap)
            log.warning("could not read when baselines were last stated (%s): stating them", exc)
            stated = None
        if stated == fingerprint:
            log.info("baseline entitlements stated by a worker less than %d s ago under the "
                     "same policy revisions and grant topics: not stated again", RESTATED_FOR_S)
            return 0
        count = await self.announce_all()
        try:
            await self.ctx.store.mark_baselines_stated(fingerprint, RESTATED_FOR_S)
        except BrokerError as exc:
            log.warning("could not record that baselines were stated (%s)", exc)
        return count

    async def announce_all(self) -> int:
        """State every registered agent's entitlement again, in batches; how many."""
        registry = self.gate.registry
        agents = registry.agent_ids()
        now = datetime.now(UTC)
        for start in range(0, len(agents), BATCH):
            events = [self._statement(r)
                      for r in registry.records_of(agents[start:start + BATCH])]
            await self.ctx.retrying("baseline", functools.partial(self._publish, events, now))
        log.info("stated the baseline entitlement of %d agent(s)", len(agents))
        return len(agents)

    async def _publish(self, events: list[BaselineEntitlement], at: datetime) -> None:
        await self.ctx.emit_grants(*((e, None) for e in events))
        await self.ctx.audit(*(baseline_audit(e, at) for e in events))
