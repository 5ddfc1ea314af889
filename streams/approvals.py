"""The worker's side of approvals: hold requests, count votes, decide and announce.

Imports broker (core and adapters), schemas, streams.worker and streams.escalations.

``hold`` is called by streams.escalations when ``decide`` held a request the policy grants only
on approval: it is audited first, then stored, then ``EscalationPending`` is published. Votes
arrive on the approvals topic, in the requesting agent's partition; each is verified by the
identity gate (operators with their operator keys, verifier agents with their own keys; the
requester's own vote is refused there and here), audited, and counted once in Redis. The vote
that reaches the quorum (or the first deny, or the window's end) closes the request; its
decision is then made and announced through the escalation path's commit and announce steps
(idempotent: a redelivered vote finds it closed and only finishes an unpublished decision).
Unanswered requests are closed by ``sweep`` a little after their window (``grace_s``) so that
votes appended inside the window are counted first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from broker.adapters.ports import NO_FENCE, Committed, Fence, RateLimit
from broker.adapters.redis.approvals import ApprovalStore, Held
from broker.errors import Fenced, StoreUnavailable, WireError
from broker.grants.approvals import resolve, vote_audit, vote_problem
from broker.grants.decide import HeldForApproval, Pending
from broker.grants.delegation_hold import HeldDelegation
from broker.policy import RiskContext
from schemas import topics
from schemas.events import ApprovalVoted, ScopeDenial
from streams.escalations import announce
from streams.worker import Admission, Gate, Incoming, WorkerContext

log = logging.getLogger("permbroker.approvals")


class Approvals:
    """Approval handling of one worker, sharing the worker's store, publisher and audit."""

    def __init__(self, ctx: WorkerContext, gate: Gate, store: ApprovalStore, *,
                 grace_s: float = 2.0) -> None:
        self.ctx = ctx
        self.gate = gate
        self.store = store
        self.grace = timedelta(seconds=grace_s)
        # Decides a held delegation once closed (set by the composition root).
        self.finish_delegation: Callable[[Held], Awaitable[None]] | None = None

    async def hold(self, held: HeldForApproval, rate: RateLimit, now: datetime) -> bool:
        """Hold a request ``decide`` held for approval; False when over the rate limit."""
        pending = held.pending
        request = pending.request
        await self.ctx.audit(held.audit)  # audit first: nothing is held unaudited
        opened, _status, published = await self.store.open(
            pending, self.ctx.policy.max_grant_duration_s, rate=rate, now=now)
        if opened == "rate":  # over the agent's rate limit: decided (denied) the usual way
            return False
        if not published:
            await self.ctx.emit(topics.DECISIONS.name, pending.event)
            await self.store.mark_published(request.agent_id, request.request_id)
        self.ctx.count("approvals_held" if opened == "opened" else "approvals_held_again")
        log.info("request %s of %s held for approval until %s", request.request_id,
                 request.agent_id, pending.event.window_expires_at.isoformat())
        return True

    async def on_vote(self, msg: Incoming) -> None:
        """Count one vote from the approvals topic (idempotent under redelivery)."""
        ctx = self.ctx
        await ctx.ready.wait()
        try:
            fence = await ctx.fence(msg)
            vote = ctx.decode(msg, ApprovalVoted)
        except Fenced as exc:
            ctx.fenced(msg, str(exc))
            return
        except WireError as exc:
            await ctx.dead_letter(msg, str(exc), exc.code)
            return
        try:
            admission = await ctx.retrying("identity", lambda: self.gate.admit(msg, vote))
            if admission is None:
                return  # refused by the identity gate (self-approval, foreign key...), audited
            await ctx.retrying("approval", lambda: self._vote(vote, msg, fence, admission))
        except Fenced as exc:
            ctx.fenced(msg, str(exc))

    async def _vote(self, vote: ApprovalVoted, msg: Incoming, fence: Fence,
                    admission: Admission) -> None:
        at = msg.received_at
        signer = str(admission.signer) if admission.signer is not None else ""
        held = await self.store.get(vote.agent_id, vote.request_id)
        if held is None:
            await self.ctx.audit(vote_audit(vote, at, "refused", f"no request {vote.request_id} "
                                          f"of {vote.agent_id} is waiting for approval",
                                          rule="approval:unknown-request", signer=signer))
            return
        problem = vote_problem(vote, held.pending, at) or admission.denial()
        if problem is not None:
            await self.ctx.audit(vote_audit(vote, at, "refused", problem.reason, rule=problem.rule,
                                          signer=signer))
            return
        what, status = await self.store.vote(
            vote.agent_id, vote.request_id, approver=vote.approver, verdict=vote.verdict,
            at=at, vote_id=vote.vote_id, quorum=held.pending.event.quorum)
        await self.ctx.audit(vote_audit(vote, at, what, f"{vote.verdict} by {vote.approver}: "
                                      f"{what}; request now {status}", signer=signer))
        if status != "pending":
            await self.finish(vote.agent_id, vote.request_id, msg, fence)

    async def finish(self, agent_id: str, request_id: str, msg: Incoming,
                     fence: Fence = NO_FENCE) -> None:
        """Decide and announce a closed request, once (a published decision is left alone)."""
        recorded = await self.ctx.store.recorded(agent_id, request_id)
        if recorded is not None and recorded.published:
            await self.store.forget_due(agent_id, request_id)
            return
        held = await self.store.get(agent_id, request_id)
        resolution = held.resolution() if held is not None else None
        if held is None or resolution is None:
            return
        if isinstance(held.pending, HeldDelegation):
            if self.finish_delegation is not None:
                await self.finish_delegation(held)
                await self.store.forget_due(agent_id, request_id)
            return
        committed = recorded or await self._commit(held, fence)
        await announce(self.ctx, committed, msg)
        await self.store.forget_due(agent_id, request_id)
        log.info("held request %s of %s %s: %s", request_id, agent_id, resolution.status,
                 committed.decision.outcome if committed.decision else "?")

    async def _commit(self, held: Held, fence: Fence) -> Committed:
        """Commit the decision of a closed request; a blocked grant becomes a denial saying why."""
        pending, resolution = held.pending, held.resolution()
        assert resolution is not None and isinstance(pending, Pending)
        agent_id = pending.request.agent_id
        blocked: ScopeDenial | None = self.gate.standing(agent_id)
        for _attempt in range(4):
            snap = await self.ctx.store.snapshot(agent_id)
            if not snap.view_built:
                await self.ctx.ensure_view()
                continue
            outcome = resolve(
                pending, resolution, policy=self.ctx.policy, agent=self.gate.profile(agent_id),
                state=snap.state, risk=RiskContext(snap.risk, pending.request.risk_score),
                blocked_by=blocked)
            await self.ctx.audit(outcome.audit)
            committed = await self.ctx.store.commit(
                outcome, received_at=pending.received_at, now=snap.now,
                max_grant_s=self.ctx.policy.max_grant_duration_s, fence=fence)
            if committed.status == "fenced":
                raise Fenced(f"approval of {pending.request.request_id}: a newer owner wrote")
            if committed.status != "blocked":
                return committed
            blocked = ScopeDenial(scope="*", rule=committed.blocked_reason,
                                  reason=f"the grant could not be stored: the agent is "
                                  f"{committed.blocked_reason} ({committed.blocked_detail})")
        raise StoreUnavailable(f"approval of {pending.request.request_id} kept being blocked")

    async def sweep(self) -> int:
        """Close held requests whose window ended unanswered; decide and announce them."""
        ctx = self.ctx
        if not ctx.ready.is_set() or (ctx.fencing and not ctx.epochs):
            return 0
        now = await ctx.store.now()
        closed = 0
        for agent_id, request_id in await self.store.due(now - self.grace):
            status = await self.store.expire(agent_id, request_id, now - self.grace)
            if status is None:
                await self.store.forget_due(agent_id, request_id)
                continue
            if status != "pending":
                await self.finish(agent_id, request_id, _window_end(agent_id, request_id, now))
                closed += 1
        return closed


def _window_end(agent_id: str, request_id: str, now: datetime) -> Incoming:
    """A stand-in message for a decision the sweep makes (no Kafka message caused it)."""
    return Incoming(topic=topics.APPROVALS.name, partition=-1, offset=-1,
                    timestamp=now.astimezone(UTC).timestamp(), key=agent_id.encode(),
                    value=request_id.encode(), headers=[])

