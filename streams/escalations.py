"""The escalation path: decode, admit, decide, audit first, commit once, announce.

Imports broker (core and ports), schemas and streams.worker; faust never (streams/app.py).

Per request: the first store snapshot is read while the identity gate checks the signature; a
redelivered request finds its recorded decision and only finishes announcing it (never decided
twice). The policy is evaluated once per attempt and ``decide`` says grant, deny or hold for
approval (handed to the ``Holder``, streams/approvals.py). Audit first: the decision's audit
record is written to the raw audit topic, and acknowledged, before the commit that makes its
grant visible. If it cannot be written within ``audit_timeout_s`` the request is denied (rule
``audit-unavailable``, fail closed); that denial's own record is then retried until the audit is
back (its partition waits), so nothing goes unaudited. The commit is refused to a stale owner
of the partition (fenced: the attempt is voided in the audit); one blocked by a concurrent
revocation, a rate limit or a missing view is decided again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

from broker.adapters import logs, tracing
from broker.adapters.ports import UNLIMITED, Committed, Fence, RateLimit, Snapshot
from broker.adapters.redis.quotas import QuotaStore
from broker.adapters.redis.values import ms
from broker.audit.records import attempt_fenced_audit
from broker.errors import BusError, Fenced, StoreUnavailable, WireError
from broker.grants.decide import (
    AUDIT_UNAVAILABLE,
    AgentState,
    HeldForApproval,
    Outcome,
    Signer,
    decide,
    decision_audit,
    duplicate_audit,
)
from broker.policy import Evaluation, Policy, RiskContext
from schemas import topics
from schemas.events import (
    AgentProfile,
    AuditRecord,
    DelegationRequested,
    EscalationRequested,
    ReleaseRequested,
    RenewalRequested,
    ScopeDenial,
)
from streams.delegation import Delegations
from streams.telemetry.figures import lap
from streams.worker import Admission, Gate, Incoming, WorkerContext, expect

log = logging.getLogger("permbroker.worker")
# Handles a renewal or release request read from the escalation topic (streams.lifecycle).
GrantRequestHandler = Callable[[Incoming, RenewalRequested | ReleaseRequested], Awaitable[None]]



class Holder(Protocol):
    """Holds requests the policy grants only on approval (streams.approvals)."""

    async def hold(self, held: HeldForApproval, rate: RateLimit, now: datetime) -> bool:
        """True once held; False when the agent is over its rate limit (decide it instead)."""


@dataclass(frozen=True)
class _Attempt:
    """The inputs of one attempt at deciding a request (what its audit record carries)."""

    request: EscalationRequested
    agent: AgentProfile | None
    state: AgentState
    risk: RiskContext
    received_at: datetime
    now: datetime
    blocked_by: ScopeDenial | None
    note: dict[str, object]
    signer: Signer | None


@dataclass
class _Carry:
    """What one attempt hands to the next: the rate limit, an outside denial, a note."""

    rate: RateLimit
    blocked_by: ScopeDenial | None
    note: dict[str, object]
    quota_checked: bool = False  # the tenant's quotas are checked once per request


class Escalations:
    """Decides the requests of the escalation topic (renewals and releases go to ``lifecycle``)."""

    def __init__(self, ctx: WorkerContext, gate: Gate, *, holder: Holder | None = None,
                 grant_requests: GrantRequestHandler | None = None,
                 delegations: Delegations | None = None,
                 quotas: QuotaStore | None = None) -> None:
        self.ctx = ctx
        self.quotas = quotas  # the tenants' quotas (None: no bundle sets any)
        self.delegations = delegations
        self.gate = gate
        self.holder = holder
        self.grant_requests = grant_requests

    async def on_escalation(self, msg: Incoming) -> None:
        """Decide one escalation request (idempotent under redelivery)."""
        ctx = self.ctx
        await ctx.ready.wait()
        try:
            await ctx.fence(msg)
            event = ctx.read(msg)
            if self.grant_requests and isinstance(event, RenewalRequested | ReleaseRequested):
                if await self._admit(msg, event) is not None:  # the agent's own, verified
                    await self.grant_requests(msg, event)
                return
            if self.delegations and isinstance(event, DelegationRequested):
                admitted = await self._admit(msg, event)  # the delegator's own, verified
                if admitted is not None:  # a registry refusal (suspended, ...) denies it
                    await self.delegations.on_request(msg, event, admitted.denial())
                return
            request = expect(event, msg, EscalationRequested)
        except Fenced as exc:
            ctx.fenced(msg, str(exc))
            return
        except WireError as exc:
            await ctx.dead_letter(msg, str(exc), exc.code)
            return
        # The first snapshot (reads only) is taken while the identity gate checks the
        # signature, to save its round trip; a retry of the decision reads afresh.
        first = [asyncio.ensure_future(self._snapshot(request, msg, recorded=True))]
        # A span per decision, child of the agent's publish; the grant and decision records
        # published inside it carry its context on to the views.
        with tracing.span("permbroker.worker.decide", parent=msg.headers, attributes={
                "permbroker.agent_id": request.agent_id,
                "permbroker.request_id": request.request_id}):
            try:
                admission = await self._admit(msg, request)
                lap("verified")
                if admission is not None and self.gate.profile(request.agent_id) is None:
                    await ctx.retrying("decide",
                                       lambda: self._deny_stranger(request, msg, admission))
                elif admission is not None:
                    await ctx.retrying("decide",
                                       lambda: self._decide(request, msg, admission, first))
            except Fenced as exc:
                ctx.fenced(msg, str(exc))
            finally:
                _discard(first)

    async def _admit(
        self, msg: Incoming,
    event: EscalationRequested | RenewalRequested | ReleaseRequested | DelegationRequested
    ) -> Admission | None:
        return await self.ctx.retrying("identity", lambda: self.gate.admit(msg, event))

    async def _snapshot(
        self, request: EscalationRequested, msg: Incoming, *, recorded: bool = False
    ) -> Snapshot:
        rid = request.request_id if recorded else None
        return await self.ctx.store.snapshot(request.agent_id, self.ctx.fence_key(msg), rid)

    async def _deny_stranger(self, request: EscalationRequested, msg: Incoming,
                             admission: Admission) -> None:
        """Deny a request in the name of an agent the registry does not know, writing nothing
        to Redis (no key under an id anyone can choose): the same ids on a redelivery, so the
        denial is the same too. Audited first, like every decision."""
        ctx, at = self.ctx, msg.received_at
        risk = RiskContext(agent=0.0, request=request.risk_score)
        signer = Signer(admission.signer.id, admission.signer.kid) if admission.signer else None
        outcome = decide(request, ctx.policy.evaluate(request, None, risk, at), agent=None,
                         state=AgentState(), received_at=at, now=at, risk=risk,
                         blocked_by=admission.denial(), note={"stranger": True}, signer=signer)
        await ctx.audit(outcome.audit)
        committed_at = time.time()  # nothing to commit in Redis: decided once audited
        await ctx.partition_fence(msg)
        ctx.count(f"decided_{outcome.decision.outcome}")
        await ctx.emit(topics.DECISIONS.name, outcome.decision)
        ctx.figures.decided(outcome.decision, msg.timestamp, committed_at)

    async def _decide(self, request: EscalationRequested, msg: Incoming, admission: Admission,
                      first: list[asyncio.Task[Snapshot]]) -> None:
        logs.bind(agent_id=request.agent_id, request_id=request.request_id)
        agent = self.gate.profile(request.agent_id)
        carry = _Carry(self._rate(agent), admission.denial(), {})
        signer = Signer(admission.signer.id, admission.signer.kid) if admission.signer else None
        committed: Committed | None = None
        pending: AuditRecord | None = None
        for attempt in range(4):
            # The first read also fetches the request's record (a redelivery), same round trip.
            snap = await (first.pop() if attempt == 0 and first else
                          self._snapshot(request, msg, recorded=attempt == 0))
            fence = await self.ctx.check_fence(msg, snap.fence_epoch)  # before any write
            lap("read")
            if not snap.view_built:
                await self.ctx.ensure_view()
                continue
            if attempt == 0 and snap.recorded is not None:
                await announce(self.ctx, snap.recorded, msg)  # a redelivery: never decide twice
                return
            if attempt == 0:  # an empty bucket read with the snapshot: denied in one attempt
                wait = carry.rate.wait_ms(snap.bucket, ms(snap.now))
                if wait is not None:
                    self._over_rate(request, agent, carry, str(wait), "read with the snapshot")
            # The epoch orders attempts across owners: a stale owner's attempt never wins.
            att = _Attempt(request, agent, snap.state,
                           RiskContext(agent=snap.risk, request=request.risk_score),
                           msg.received_at, snap.now, carry.blocked_by,
                           {**carry.note, "attempt": attempt, "fence_epoch": fence.epoch}, signer)
            step = await self._attempt(att, msg, fence, carry)
            if step is None:
                return  # held for approval: decided when approvers answer (streams.approvals)
            committed, pending = step
            if not await self._again(committed, request, agent, carry):
                break
        if committed is None:
            raise StoreUnavailable("the grant view was not built during the decision")
        await announce(self.ctx, committed, msg, pending)

    async def _attempt(self, att: _Attempt, msg: Incoming, fence: Fence,
                       carry: _Carry) -> tuple[Committed, AuditRecord | None] | None:
        """Hold, or audit then commit; None when held. A fenced commit voids its attempt."""
        ctx = self.ctx
        policy = ctx.policy_for(att.agent)  # the agent's tenant's: never another tenant's
        att = await self._quota(att, carry, policy)
        evaluation = policy.evaluate(att.request, att.agent, att.risk, att.now)
        decided = self._decide_or_hold(att, evaluation)
        lap("decided")
        if isinstance(decided, HeldForApproval):
            assert self.holder is not None
            if await self.holder.hold(decided, carry.rate, att.now):
                return None
            decided = self._decision(att, evaluation)  # over the rate limit: decided as usual
        outcome, pending = await self._audit_first(att, evaluation, decided)
        lap("audited")
        # A stall during the audit write may have cost us the partition: the commit checks the
        # partition's claimed epoch (the fence's claim) and refuses a stale owner.
        committed = await ctx.store.commit(
            outcome, received_at=att.received_at, now=att.now,
            max_grant_s=policy.max_grant_duration_s, fence=fence, rate=carry.rate,
        )
        lap("committed")
        if committed.status == "stored" and committed.grant is not None and self.quotas:
            await self.quotas.count(committed.grant)
        if committed.status == "fenced":
            await _void(ctx, decided.audit, committed.blocked_reason)
            if (await ctx.fence(msg)).epoch == fence.epoch:
                raise Fenced(f"{msg.origin}: commit fenced by epoch {committed.blocked_reason}")
            carry.note = {"previous_attempt": "fenced by this worker's own re-claim"}  # a wipe
        return committed, pending

    async def _quota(self, att: _Attempt, carry: _Carry, policy: Policy) -> _Attempt:
        """The attempt denied by its tenant's quota (the rule named) when over one; checked
        once per request (a token taken once), after the redelivery check, and only for a
        request nothing else denies already."""
        if carry.quota_checked or self.quotas is None or att.blocked_by is not None \
                or att.agent is None:
            return att
        carry.quota_checked = True
        denial = await self.quotas.denial(att.agent.tenant, policy.quotas, att.now)
        if denial is None:
            return att
        self.ctx.count("quota_denied")
        carry.blocked_by = denial
        return replace(att, blocked_by=denial)

    async def _again(self, committed: Committed, request: EscalationRequested,
                     agent: AgentProfile | None, carry: _Carry) -> bool:
        """Whether to decide again: fenced by our own re-claim, or blocked at commit."""
        if committed.status == "fenced":
            return True
        if committed.status != "blocked":
            return False
        carry.note = {"previous_attempt": f"blocked at commit ({committed.blocked_reason})"}
        if committed.blocked_reason == "rate":
            self._over_rate(request, agent, carry, committed.blocked_detail, "")
        elif committed.blocked_reason == "view":
            await self.ctx.ensure_view()
        log.info("request %s blocked at commit (%s); deciding again",
                 request.request_id, committed.blocked_reason)
        return True

    def _over_rate(self, request: EscalationRequested, agent: AgentProfile | None,
                   carry: _Carry, retry_ms: str, seen: str) -> None:
        """Decide the request as over its rate limit (the denial names when a token frees up).

        The commit then takes no token (``UNLIMITED``): a denial of the limit costs none. Read
        with the snapshot, an empty bucket saves the attempt the commit script would refuse.
        """
        self.ctx.count("rate_limited")
        carry.blocked_by = self._rate_denial(request, agent, retry_ms)
        carry.rate = UNLIMITED
        if seen:
            carry.note = {**carry.note, "rate_limit": f"bucket empty, {seen}"}

    def _decide_or_hold(self, att: _Attempt, evaluation: Evaluation) -> Outcome | HeldForApproval:
        """The decision, or a hold when there is a holder and the policy asks for approval."""
        return decide(
            att.request, evaluation, agent=att.agent, state=att.state,
            received_at=att.received_at, now=att.now, risk=att.risk, blocked_by=att.blocked_by,
            note=att.note, signer=att.signer, holds=self.holder is not None,
        )

    def _decision(self, att: _Attempt, evaluation: Evaluation,
                  blocked_by: ScopeDenial | None = None) -> Outcome:
        return decide(
            att.request, evaluation, agent=att.agent, state=att.state,
            received_at=att.received_at, now=att.now, risk=att.risk,
            blocked_by=blocked_by or att.blocked_by, note=att.note, signer=att.signer,
        )

    async def _audit_first(self, att: _Attempt, evaluation: Evaluation,
                           outcome: Outcome) -> tuple[Outcome, AuditRecord | None]:
        """Audit the decision before its commit; if that fails, deny (its record is pending)."""
        try:
            await asyncio.wait_for(self.ctx.audit(outcome.audit), self.ctx.audit_timeout_s)
        except (BusError, TimeoutError) as exc:
            self.ctx.count("audit_fail_closed")
            log.error("audit not written for request %s of %s; denying it (fail closed): %s",
                      att.request.request_id, att.request.agent_id, exc)
            denied = self._decision(att, evaluation, _audit_denial(exc))
            return denied, denied.audit
        return outcome, None

    def _rate(self, agent: AgentProfile | None) -> RateLimit:
        rule = self.ctx.policy_for(agent).rate_limit(agent)
        return RateLimit(rule.requests, rule.per_s * 1000) if rule else UNLIMITED

    def _rate_denial(self, request: EscalationRequested, agent: AgentProfile | None,
                     retry_ms: str) -> ScopeDenial:
        rule = self.ctx.policy_for(agent).rate_limit(agent)
        assert rule is not None
        return ScopeDenial(
            scope="*",
            rule=rule.rule,
            reason=f"agent {request.agent_id} is over the rate limit of its class "
            f"({rule.describe()}); a token frees up in {retry_ms} ms",
        )


async def announce(ctx: WorkerContext, committed: Committed, msg: Incoming,
                   pending: AuditRecord | None = None) -> None:
    """Publish a committed decision: its grant, then the decision; then mark it published.

    A decision found stored and already published is a duplicate (audited as such); one stored
    before a crash and never published is finished now. ``pending`` is a fail-closed denial's
    audit record, written (retried) once the decision is out.
    """
    decision = committed.decision
    if decision is None:  # blocked every time: the next attempt starts over
        raise StoreUnavailable("agent state kept changing during the decision")
    # Committed just now, or (finished after a crash) around when it was decided.
    committed_at = time.time() if committed.status != "existing" else \
        decision.decided_at.timestamp()
    # Stalled since the commit? Then the new owner announces it (found stored, unpublished).
    await ctx.partition_fence(msg)
    if committed.status == "existing" and committed.published:
        ctx.count("duplicates")
        await ctx.audit(duplicate_audit(
            decision, committed.grant is not None, msg.origin, datetime.now(UTC)))
        return
    if committed.status == "existing":  # stored before a crash, never published: finish it
        ctx.count("recovered")
        await ctx.audit(decision_audit(decision, {"recovered_from": msg.origin}))
    else:
        ctx.count(f"decided_{decision.outcome}")
    logs.bind(agent_id=decision.agent_id, request_id=decision.request_id,
              grant_id=decision.grant_id)
    # The grant first, so whoever sees the decision can already find the grant.
    if committed.grant is not None:
        token = await ctx.emit_grants((committed.grant, None))
        if token is not None:
            decision = decision.model_copy(update={"consistency_token": token.encode()})
    await ctx.emit(topics.DECISIONS.name, decision)
    lap("published")
    ctx.figures.decided(decision, msg.timestamp, committed_at)
    log.info("decided: %s", decision.outcome)  # the ids are bound (agent, request, grant)
    if pending is not None:  # a fail-closed denial: its record waits for the audit to return
        await ctx.audit_until_written(pending)
    await ctx.store.mark_published(
        decision, received_at=msg.received_at, max_grant_s=ctx.policy.max_grant_duration_s
    )


async def _void(ctx: WorkerContext, attempt: AuditRecord, owner: str) -> None:
    """Audit that a fenced attempt never took effect.

    ``attempt`` is the record whose write was attempted: written, or, when the write failed or
    timed out (the fail-closed path), possibly appended all the same (a stalled process's
    producer sends what it buffered when it resumes). A fail-closed denial's own record is only
    written once its decision is out, so never for a fenced attempt.
    """
    await ctx.audit(attempt_fenced_audit(attempt, owner, datetime.now(UTC)))


def _audit_denial(exc: Exception) -> ScopeDenial:
    return ScopeDenial(
        scope="*", rule=AUDIT_UNAVAILABLE,
        reason=f"the audit stream could not be written ({type(exc).__name__}: "
        f"{str(exc)[:160] or 'timed out'}); no grant is issued without an audit record "
        "(fail closed): retry once the audit is available again",
    )


def _discard(tasks: list[asyncio.Task[Snapshot]]) -> None:
    """Drop prefetched snapshots nobody used (and their errors: the decision reads again)."""
    for task in tasks:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    tasks.clear()
