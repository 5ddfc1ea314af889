"""Renewals, releases, expiry warnings and expiries in the worker. Imports broker, streams.worker.

Renewal and release requests arrive on the escalation topic (keyed by the agent, so in order
with its requests); streams.escalations hands them here. Each is decided by the pure core
(``broker.grants.renewal``), stored once in Redis (a redelivery gets the recorded answer), then its
lifecycle event goes to the grant topics its routing names and its decision to the decision
topic, with the consistency token of the lifecycle event. Each is decided at the store's clock
(Redis's: the one that expires the grant's key), as an escalation is. Like a decision, each
attempt is audited on the raw audit topic before the Redis write (a failed audit write is retried:
the partition waits, nothing is stored unaudited). The sweep announces
``grant.expiring`` before ``grant.expired`` (warnings first in every tick; a late warning still
goes out while the grant has not been announced as expired); an expiry is announced once Redis's
TTL ended the grant (``grant.expired`` to its namespaces' topics, audited).
"""

from __future__ import annotations

import logging
from datetime import datetime

from broker.adapters.redis.lifecycle import LifecycleStore, recorded_release, recorded_renewal
from broker.delivery.routing import namespaces_of
from broker.errors import StoreUnavailable
from broker.grants.renewal import RenewalOutcome, decide_release, decide_renewal, grant_renewed
from broker.grants.revocation import lifecycle_audit
from broker.policy import RiskContext
from schemas import topics
from schemas.events import (
    GrantIssued,
    GrantReleased,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
)
from streams.worker import Gate, Incoming, WorkerContext

log = logging.getLogger("permbroker.worker")


class Lifecycle:
    """The worker's renewal, release, expiry-warning and expiry logic."""

    def __init__(self, ctx: WorkerContext, gate: Gate, life: LifecycleStore) -> None:
        self.ctx = ctx
        self._gate = gate
        self._life = life

    async def on_request(self, msg: Incoming, event: RenewalRequested | ReleaseRequested) -> None:
        """Decide a renewal or release (retrying store and bus failures; the partition waits)."""
        if isinstance(event, RenewalRequested):
            await self.ctx.retrying("renew", lambda: self._renew(event, msg))
        else:
            await self.ctx.retrying("release", lambda: self._release(event, msg))

    async def _renew(self, renewal: RenewalRequested, msg: Incoming) -> None:
        audited = await self._life.recorded("renewal", renewal.agent_id, renewal.request_id)
        for _attempt in range(3):
            now = await self.ctx.store.now()  # the clock the grant's key expires by
            grant = await self._life.live_grant(renewal.agent_id, renewal.grant_id, now)
            outcome = await self._decide_renewal(renewal, grant, msg.received_at, now)
            if not audited:  # audit first: nothing is stored unaudited
                await self.ctx.audit(outcome.audit)
            stored = await self._life.renew(
                outcome, grant, received_at=msg.received_at, now=now,
                max_grant_s=self.ctx.policy.max_grant_duration_s,
            )
            if stored.status != "blocked":
                break
            log.info("renewal %s blocked (%s); deciding again", renewal.request_id,
                     stored.blocked_reason)
        else:
            raise StoreUnavailable("the grant kept changing during the renewal")
        decision = recorded_renewal(stored)
        if decision.outcome == "renewed":
            decision = await self._announce_renewal(decision, grant, now)
        await self.ctx.emit(topics.DECISIONS.name, decision)
        self.ctx.count(f"renewal_{decision.outcome}")

    async def _decide_renewal(
        self, renewal: RenewalRequested, grant: GrantIssued | None, received_at: datetime,
        now: datetime,
    ) -> RenewalOutcome:
        agent = self._gate.profile(renewal.agent_id)
        return decide_renewal(
            renewal, grant, self.ctx.policy_for(agent), agent=agent,
            risk=RiskContext(agent=await self.ctx.store.live_risk(renewal.agent_id),
                             request=renewal.risk_score),
            state=await self.ctx.store.agent_state(renewal.agent_id),
            received_at=received_at, now=now,
        )

    async def _announce_renewal(
        self, decision: RenewalDecided, grant: GrantIssued | None, now: datetime
    ) -> RenewalDecided:
        """Publish grant.renewed, built from the recorded decision (a redelivery repeats it)."""
        held = grant or await self._life.live_grant(decision.agent_id, decision.grant_id, now)
        if held is None or decision.expires_at is None:
            return decision  # ended meanwhile (revoked, released): nothing left to extend
        renewed = grant_renewed(
            held.model_copy(update={"expires_at": decision.previous_expires_at or
                                    held.expires_at}),
            decision.request_id, decision.expires_at, decision.decided_at,
            decision.policy_revision, decision.matched_rules,
        )
        token = await self.ctx.emit_grants((renewed, namespaces_of(held.scopes)))
        if token is None:
            return decision
        return decision.model_copy(update={"consistency_token": token.encode()})

    async def _release(self, release: ReleaseRequested, msg: Incoming) -> None:
        audited = await self._life.recorded("release", release.agent_id, release.request_id)
        for _attempt in range(3):
            now = await self.ctx.store.now()  # the clock the grant's key expires by
            grant = await self._life.live_grant(release.agent_id, release.grant_id, now)
            decision, _event, audit = decide_release(release, grant, now)
            if not audited:  # audit first: nothing is stored unaudited
                await self.ctx.audit(audit)
            stored = await self._life.release(
                decision, received_at=msg.received_at,
                max_grant_s=self.ctx.policy.max_grant_duration_s,
            )
            if stored.status != "blocked":
                break
        else:
            raise StoreUnavailable("the grant kept changing during the release")
        decision = recorded_release(stored)
        if decision.outcome == "released":
            released = GrantReleased(
                grant_id=decision.grant_id, agent_id=decision.agent_id,
                released_at=decision.decided_at, reason=release.reason,
            )
            spaces = namespaces_of(grant.scopes) if grant is not None else None
            token = await self.ctx.emit_grants((released, spaces))
            if token is not None:
                decision = decision.model_copy(update={"consistency_token": token.encode()})
        await self.ctx.emit(topics.DECISIONS.name, decision)
        self.ctx.count(f"release_{decision.outcome}")

    async def sweep(self) -> int:
        """Announce due expiry warnings, then due expiries (so a warning always comes first)."""
        if not self.ctx.ready.is_set():
            return 0
        due = await self._life.due_warnings(await self.ctx.store.now())
        live = [(d.event, d.namespaces) for d in due if d.event is not None]
        if live:
            await self.ctx.emit_grants(*live)
        await self._life.ack_warnings(due)
        return len(live) + await self.sweep_expiries()

    async def sweep_expiries(self) -> int:
        """Announce grants that reached their absolute expiry (Redis TTL already ended them)."""
        ctx = self.ctx
        if not ctx.ready.is_set() or (ctx.fencing and not ctx.epochs):
            return 0  # a worker that owns no partition (or lost them all) announces nothing
        if await ctx.store.view_epoch() is None:
            await ctx.ensure_view()  # a wiped Redis is rebuilt even when no request comes
        now = await ctx.store.now()
        due = await ctx.store.due_expiries(now)
        live = [d for d in due if d.live]
        announce = [d.event for d in live]
        if live:
            await ctx.emit_grants(*((d.event, d.namespaces) for d in live))
        await ctx.audit(*(lifecycle_audit(e, now) for e in announce))
        await ctx.store.ack_expiries(due)
        for _ in announce:
            ctx.count("expired")
        return len(announce)

