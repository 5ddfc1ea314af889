"""Delegation in the worker: decide a delegation, and end every child when its parent ends.

Imports broker (core and ports), schemas and streams.worker; faust never (streams/app.py).

A delegation request arrives on the escalation topic, keyed by the delegator (in order with
its other requests); streams.escalations hands it here once the identity gate verified it.
It is decided at the store's clock by ``broker.grants.delegation``, audited first, then the
child grant is written in the delegate's slot and the decision recorded in the delegator's,
together with the child's place in its parent's children set, in one step that checks the
parent still lives (a parent that ended meanwhile ends the child at once: denied, audited).
Then the child's ``grant.issued`` goes to the grant topics and the decision, with its
consistency token, to the decision topic. A redelivery finds the recorded decision and only
announces it again. A delegation whose rule asks for approval is held in the approval store
(its pending notice on the decision topic); when the approvals machinery closes it,
``finish_held`` decides it again at that moment (approved) or denies it.

The cascade reads the all-grants topic: a revoked, released or expired grant (an agent's
revocation comes with a ``grant.revoked`` per grant) ends each of its children
(``grant.revoked``, rule ``delegation-parent-ended``, audited per child); that child's own
revocation, read in turn, ends the grandchildren. Redelivery repeats the same events (each
end is recorded per child). A record that declares a type which ends nothing (``grant.issued``
and the like: most of the topic) is passed by unread; only the others are verified.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from broker.adapters.redis.approvals import ApprovalStore, Held
from broker.adapters.redis.delegation import DelegationStore
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.adapters.redis.store import RedisGrantStore
from broker.delivery.routing import namespaces_of
from broker.grants.approvals import Resolution
from broker.grants.decide import AgentState
from broker.grants.delegation import (
    PARENT,
    DelegationOutcome,
    Parties,
    decide_delegation,
    delegation_audit,
)
from broker.grants.delegation_hold import (
    HeldDelegation,
    approval_needed,
    approved,
    hold_delegation,
    refused,
)
from broker.grants.revocation import lifecycle_audit
from broker.policy import Policy
from schemas import topics
from schemas.events import (
    EVENT_TYPES,
    DelegationDecided,
    DelegationRequested,
    GrantExpired,
    GrantIssued,
    GrantReleased,
    GrantRevoked,
    ScopeDenial,
)
from streams.worker import Gate, Incoming, WorkerContext

log = logging.getLogger("permbroker.worker")
ENDS = (GrantRevoked, GrantReleased, GrantExpired)  # what ends a grant, hence its children
# The grant topic's event types that end no grant: the cascade passes them by unread.
PASS_BY = frozenset(t.encode() for t in topics.GRANT_EVENT_TYPES) - {
    EVENT_TYPES[end].encode() for end in ENDS}
Schedule = Callable[[GrantIssued, datetime], Awaitable[None]]
PARENT_ENDED = "delegation-parent-ended"  # the rule of a child's revocation by its parent's end


class Delegations:
    """The worker's delegation decisions and the cascade from parents to children."""

    def __init__(self, ctx: WorkerContext, gate: Gate, life: LifecycleStore,
                 grants: RedisGrantStore, held: ApprovalStore | None = None) -> None:
        self.ctx = ctx
        # Indexes a grant's expiry (before it is stored: never missed), as escalations do.
        self._schedule: Schedule = grants.schedule
        self._gate = gate
        self._store = DelegationStore(grants.client)
        self._life = life
        self._held = held  # where a delegation waits for approvers (None: none is held)

    async def on_request(self, msg: Incoming, request: DelegationRequested,
                         refusal: ScopeDenial | None = None) -> None:
        """Decide one delegation (retrying store and bus failures; the partition waits);
        ``refusal``: the identity gate's (a suspended or quarantined delegator), a denial."""
        await self.ctx.retrying("delegate", lambda: self._delegate(
            request, refusal, received_at=msg.received_at))

    async def finish_held(self, held: Held) -> None:
        """Decide a held delegation whose approval closed: again at the deciding moment if
        approved (parent still live, child within it), else denied; once."""
        pending, resolution = held.pending, held.resolution()
        assert isinstance(pending, HeldDelegation) and resolution is not None
        request = pending.request
        await self.ctx.retrying("delegate", lambda: self._delegate(
            request, self._gate.standing(request.agent_id), received_at=pending.received_at,
            approval=(pending, resolution)))

    async def _delegate(self, request: DelegationRequested, refusal: ScopeDenial | None, *,
                        received_at: datetime,
                        approval: tuple[HeldDelegation, Resolution] | None = None) -> None:
        recorded = await self._store.recorded(request.agent_id, request.request_id)
        if recorded is not None:  # a redelivery: announce what was decided, never decide again
            await self._announce(recorded, await self._child_of(recorded))
            return
        now = await self.ctx.store.now()  # the clock the grants' keys expire by
        parties = await self._parties(request, now, refusal)
        policy = self.ctx.policy_for(parties.delegator)  # its tenant's rules, approvals included
        outcome = decide_delegation(request, parties, policy, now)
        if approval is not None:
            outcome = self._approved(outcome, *approval, now)
        elif await self._hold(outcome, request, received_at, now, policy):
            return
        await self.ctx.audit(outcome.audit)  # audit first: nothing is stored unaudited
        decision, grant = outcome.decision, outcome.grant
        if grant is not None:
            await self._schedule(grant, self._until(grant.expires_at))
            child = await self._store.commit_child(grant, now, self._until(grant.expires_at))
            if child != "stored":
                decision, grant = await self._refused(outcome, parties, request, child, now)
        record_until = self._until(parties.parent.expires_at if parties.parent else now)
        status, found = await self._store.record(decision, grant, record_until)
        if status == "parent-ended" and grant is not None:
            await self._store.end_child(grant.agent_id, grant.grant_id, now, record_until)
            decision, grant = await self._refused(outcome, parties, request,
                                                  "the parent grant ended meanwhile", now)
            status, found = await self._store.record(decision, None, record_until)
        if status == "existing" and found is not None:
            decision = found
        await self._announce(decision, grant)

    def _approved(self, outcome: DelegationOutcome, held: HeldDelegation,
                  resolution: Resolution, now: datetime) -> DelegationOutcome:
        """The decision once the approval closed: approved (as decided now), or denied."""
        if resolution.status == "approved":  # a denial now (parent ended...) stays one
            return (approved(outcome, resolution.approvers, held, resolution.decided_at)
                    if outcome.grant is not None else outcome)
        decision, audit = refused(held, resolution.status, resolution.denier, now)
        return DelegationOutcome(decision, None, audit)

    async def _hold(self, outcome: DelegationOutcome, request: DelegationRequested,
                    received_at: datetime, now: datetime, policy: Policy) -> bool:
        """Hold a delegation its rule grants only on approval (audited, then stored, then
        the pending notice published once); False when no approval is needed."""
        need = approval_needed(policy, outcome.decision)
        if need is None or outcome.grant is None or self._held is None:
            return False
        held, audit = hold_delegation(outcome, request, need, received_at, now)
        await self.ctx.audit(audit)
        _opened, _status, published = await self._held.open(
            held, self.ctx.policy.max_grant_duration_s, now=now)
        if not published:
            await self.ctx.emit(topics.DECISIONS.name, held.event)
            await self._held.mark_published(request.agent_id, request.request_id)
        self.ctx.count("delegation_held")
        return True

    async def _parties(self, request: DelegationRequested, now: datetime,
                       refusal: ScopeDenial | None) -> Parties:
        delegate = self._gate.profile(request.delegate_id)
        return Parties(
            refusal=refusal,
            parent=await self._life.live_grant(request.agent_id, request.parent_grant_id, now),
            delegator=self._gate.profile(request.agent_id),
            delegator_state=await self.ctx.store.agent_state(request.agent_id),
            delegate=delegate,
            delegate_state=(await self.ctx.store.agent_state(request.delegate_id)
                            if delegate is not None else AgentState()))

    async def _refused(self, outcome: DelegationOutcome, parties: Parties,
                       request: DelegationRequested, why: str,
                       now: datetime) -> tuple[DelegationDecided, None]:
        """The decision turned into a denial because the store refused the child; audited."""
        reason = f"the child grant could not be written: {why}"
        denied = tuple(ScopeDenial(scope=s, rule=PARENT, reason=reason) for s in request.scopes)
        decision = outcome.decision.model_copy(update={
            "outcome": "denied", "grant_id": None, "granted_scopes": (), "resources": (),
            "expires_at": None, "clamped_by": None, "denied": denied, "reasons": (reason,),
            "matched_rules": (*outcome.decision.matched_rules, PARENT)})
        await self.ctx.audit(delegation_audit(decision, request, parties, now, "#refused"))
        return decision, None

    def _until(self, when: datetime) -> datetime:
        return when + timedelta(seconds=self.ctx.margin_s)

    async def _child_of(self, decision: DelegationDecided) -> GrantIssued | None:
        if decision.grant_id is None:
            return None
        now = await self.ctx.store.now()
        return await self._life.live_grant(decision.delegate_id, decision.grant_id, now)

    async def _announce(self, decision: DelegationDecided, grant: GrantIssued | None) -> None:
        """The child grant first (whoever sees the decision can find it), then the decision."""
        if grant is not None:
            token = await self.ctx.emit_grants((grant, namespaces_of(grant.scopes)))
            if token is not None:
                decision = decision.model_copy(update={"consistency_token": token.encode()})
        await self.ctx.emit(topics.DECISIONS.name, decision)
        self.ctx.count(f"delegation_{decision.outcome}")

    async def on_grant_event(self, msg: Incoming) -> None:
        """End the children of every grant a record of the all-grants topic ends."""
        await self.ctx.ready.wait()
        if _passes_by(msg):  # nothing to end: not read, so not verified either
            self.ctx.count("cascade_passed_by")
            return
        event = self.ctx.read(msg)
        # An agent's revocation comes with one grant.revoked per grant it removed: those end
        # the children (agent.revoked itself adds nothing to cascade).
        if isinstance(event, ENDS):
            await self.ctx.retrying("cascade", lambda: self._cascade(
                event.agent_id, event.grant_id, event))

    async def _cascade(self, agent_id: str, grant_id: str,
                       cause: GrantRevoked | GrantReleased | GrantExpired) -> None:
        children = await self._store.children(agent_id, grant_id)
        if not children:
            return
        now = await self.ctx.store.now()
        how = type(cause).__name__.removeprefix("Grant").lower()
        for child_agent, child_id in children:
            at, child = await self._store.end_child(child_agent, child_id, now,
                                                    self._until(now))
            if child is None:
                continue  # it had already ended on its own (expired, released, revoked)
            revoked = GrantRevoked(  # the same event on a redelivery (recorded with the end)
                grant_id=child.grant_id, agent_id=child.agent_id, revoked_at=at,
                expires_at=child.expires_at, rule=PARENT_ENDED, cause_event_id=grant_id,
                reason=f"parent grant {grant_id} of {agent_id} was {how}: a delegated grant "
                "never outlives its parent")
            await self.ctx.audit(lifecycle_audit(revoked, at))  # audited per child
            await self.ctx.emit_grants((revoked, namespaces_of(child.scopes)))
            self.ctx.count("delegation_cascaded")
            log.info("grant %s of %s ended with its parent %s", child_id, child_agent, grant_id)


def _passes_by(msg: Incoming) -> bool:
    """Whether a record declares (``ce_type``) a known grant event type that ends no grant.

    Only a record declaring an ending type, or none, or one unknown, is read: verified, and
    dead-lettered if refused. A record that declares another type is passed by unread whatever
    it holds: had it been read, the cascade would have acted on nothing it could decode from
    it. The grant views and the rebuild, which act on every type, verify every record.
    """
    declared = [v for k, v in msg.headers if k == "ce_type"]
    return len(declared) == 1 and declared[0] in PASS_BY
