"""What the faust agents do with one message: decode at the edge, call the core, store, publish.

Imports broker (core and adapters) and schemas; faust is only seen through ``Incoming`` and the
``Publish`` callable, so this module is testable without a running worker. Handlers never let an
error ack a message silently: bad bytes go to the dead-letter topic, transient store/bus failures
are retried (the partition waits), and a risk signal that cannot be handled stops the worker.

Audit first: a decision's audit record is written to the raw audit topic, and acknowledged,
before the Redis commit that makes its grant visible. If it cannot be written within
``audit_timeout_s`` the request is denied (rule ``audit-unavailable``, fail closed); that
denial's own record is then retried until the audit is back (its partition waits), so nothing
goes unaudited. Every audit record has its sensitive values replaced by keyed HMACs first.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from broker.adapters.kafka import codec
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import (
    NO_FENCE,
    NO_RISK_FENCE,
    UNLIMITED,
    Committed,
    Fence,
    RateLimit,
    RedisGrantStore,
    Snapshot,
)
from broker.audit.records import attempt_fenced_audit, policy_loaded_audit
from broker.audit.redact import Redactor
from broker.delivery.consistency import ConsistencyToken, Position, token_of
from broker.delivery.routing import GrantRouting, namespaces_of
from broker.errors import BusError, Fenced, StoreUnavailable, WireError
from broker.grants.decide import (
    AUDIT_UNAVAILABLE,
    AgentState,
    Outcome,
    decide,
    decision_audit,
    derive_id,
    duplicate_audit,
    lifecycle_audit,
    plan_revocation,
    revoked_events,
    risk_audit,
)
from broker.policy import Policy, RiskAction, RiskContext
from schemas import topics
from schemas.events import (
    AGENT_ID_PATTERN,
    OPERATOR_REVOKE_KIND,
    AgentProfile,
    AuditRecord,
    EscalationRequested,
    ReleaseRequested,
    RenewalRequested,
    RiskObserved,
    ScopeDenial,
    WireModel,
)
from streams.dead_letter import dead_letter_audit, dead_letter_message

log = logging.getLogger("permbroker.worker")
T = TypeVar("T")
# ce_source of what this worker writes: which host and process wrote it (for operators, and for
# proving that a fenced worker wrote nothing).
SOURCE = f"/permbroker/worker/{socket.gethostname()}/{os.getpid()}"
RISK_WINDOW = timedelta(minutes=10)


@dataclass(frozen=True)
class Incoming:
    """One consumed message, as the handlers need it."""

    topic: str
    partition: int
    offset: int
    timestamp: float
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def origin(self) -> str:
        """topic/partition/offset, for reasons and ids."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def received_at(self) -> datetime:
        """When Kafka appended the message (topics use LogAppendTime)."""
        return datetime.fromtimestamp(self.timestamp, tz=UTC)


# Publish(topic, messages) sends every message and returns once Kafka acknowledged all of them,
# with where each landed (None from publishers that cannot tell).
Publish = Callable[[str, Sequence[codec.Encoded]], Awaitable[Sequence[Position] | None]]
# PublishMany([(topic, message), ...]): like Publish across topics, in one go (one produce
# round trip where the client can batch them), returning where each landed.
PublishMany = Callable[[Sequence[tuple[str, codec.Encoded]]], Awaitable[Sequence[Position]]]
# Handles a renewal or release request read from the escalation topic (streams.lifecycle).
GrantRequestHandler = Callable[["Incoming", RenewalRequested | ReleaseRequested], Awaitable[None]]
# A grant lifecycle event and the namespaces of the grant it concerns (None: unknown or all).
Routed = tuple[WireModel, frozenset[str] | tuple[str, ...] | None]
# Rebuilds the Redis view from the grant topic; returns how many grants it restored.
Rebuild = Callable[[], Awaitable[int]]
Clock = Callable[[], datetime]
ROLES = {topics.ESCALATIONS.name: "esc", topics.RISK.name: "risk",
         topics.APPROVALS.name: "appr"}


def _discard(tasks: list[asyncio.Task[Snapshot]]) -> None:
    """Drop prefetched snapshots nobody used (and their errors: the decision reads again)."""
    for task in tasks:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    tasks.clear()


class Admission(Protocol):
    """What the identity gate says of an admitted event (see streams/identity.py)."""

    def denial(self) -> ScopeDenial | None:
        """An outside denial (``decide``'s blocked_by) when the authentic agent may not act."""

    def bind(self, outcome: Outcome) -> Outcome:
        """The outcome with the signer's key and the model recorded on grant and audit."""


class Gate(Protocol):
    """Identity checks before policy: None means rejected (and already audited)."""

    async def admit(self, msg: Incoming, event: WireModel) -> Admission | None:
        """Verify signature, key, freshness, replay and authority of one event."""

    def profile(self, agent_id: str) -> AgentProfile | None:
        """The agent's profile from the registry (baseline and ceiling from its class)."""

    async def authentic_for(self, msg: Incoming, agent_id: str) -> bool:
        """Whether an undecodable message is validly signed by the agent or an operator."""


class Holder(Protocol):
    """Holds requests the policy grants only on approval (streams.approvals)."""

    async def hold(self, ctx: _Attempt) -> bool:
        """True when the request was held for approval instead of decided."""


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
    admission: Admission | None = None  # the identity gate's verdict (signer, refusal)


class Processor:
    """The broker's decision logic wired to a store and a publisher."""

    def __init__(
        self,
        policy: Policy,
        store: RedisGrantStore,
        publish: Publish,
        *,
        margin_s: int = 3600,
        rebuild: Rebuild | None = None,
        clock: Clock | None = None,
        fencing: bool = False,
        redactor: Redactor | None = None,
        audit_timeout_s: float = 5.0,
        routing: GrantRouting | None = None,
        publish_many: PublishMany | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self._publish = publish
        self._margin_s = margin_s
        self._rebuild = rebuild
        self._clock = clock  # None: Redis's clock (the one that expires the keys)
        self._redactor = redactor
        self._audit_timeout_s = audit_timeout_s
        self._view_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.counters: dict[str, int] = {}
        self.routing = routing or GrantRouting()
        self._publish_many = publish_many
        self.grant_requests: GrantRequestHandler | None = None
        # (topic, partition) -> the epoch this worker claimed when it was assigned it. With
        # fencing on, a message of a partition not in here is not ours: it is left alone.
        self.fencing = fencing
        self.epochs: dict[tuple[str, int], int] = {}
        self.claimed = asyncio.Event()  # clear while an assignment is being claimed
        self._reclaiming: dict[tuple[str, int], asyncio.Lock] = {}  # one re-claim at a time
        self.claimed.set()
        self.identity: Gate | None = None  # set by streams.app when identity checks are on
        self.approvals: Holder | None = None  # set by streams.app: approval rules hold requests

    def agent_profile(self, agent_id: str) -> AgentProfile | None:
        """The agent's profile: from the registry when identity is on, else the policy bundle."""
        if self.identity is not None:
            return self.identity.profile(agent_id)
        return self.policy.agent(agent_id)

    async def _admit(self, msg: Incoming, event: WireModel) -> Admission | bool | None:
        """The identity gate's verdict (True when there is no gate)."""
        gate = self.identity
        if gate is None:
            return True
        return await self._retrying("identity", lambda: gate.admit(msg, event))

    async def revoke_agent(
        self, agent_id: str, cause_id: str, action: RiskAction, now: datetime
    ) -> tuple[str, ...]:
        """Revoke every grant of an agent (registry suspensions, key revocations, model changes)."""
        revoked, _token = await self._revoke(agent_id, cause_id, action, now, NO_RISK_FENCE)
        return revoked

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    async def emit(self, topic: str, *events: WireModel) -> None:
        """Encode and publish events to one topic, waiting for Kafka's acknowledgement."""
        if events:
            await self._publish(topic, [codec.encode(e, source=SOURCE) for e in events])

    async def emit_grants(self, *items: Routed) -> ConsistencyToken | None:
        """Publish grant lifecycle events to every topic their routing names, topics in parallel.

        Returns the consistency token of what was written (None if the publisher cannot tell).
        """
        routed = [
            (topic, codec.encode(copy, source=SOURCE))
            for event, namespaces in items
            for topic, copy in self.routing.route(event, namespaces)
        ]
        if self._publish_many is not None:
            positions = list(await self._publish_many(routed))
        else:
            per_topic: dict[str, list[codec.Encoded]] = {}
            for topic, message in routed:
                per_topic.setdefault(topic, []).append(message)
            results = await asyncio.gather(*(self._publish(t, m) for t, m in per_topic.items()))
            positions = [p for result in results if result for p in result]
        return token_of(positions) if positions else None

    async def audit(self, *records: AuditRecord, also: Sequence[str] = ()) -> None:
        """Write audit records (sensitive values as HMACs) to the raw audit topic; await the ack."""
        if self._redactor is not None:
            records = tuple(self._redactor.redact(r, also) for r in records)
        await self.emit(topics.AUDIT_RAW.name, *records)

    async def audit_until_written(self, *records: AuditRecord) -> None:
        """``audit``, retried until Kafka takes it (the caller waits: nothing goes unaudited)."""
        await self._retrying("audit", lambda: self.audit(*records))

    def sensitive(self, data: dict[str, object]) -> tuple[str, ...]:
        """The sensitive values of an input, to hide wherever they are quoted."""
        return tuple(self._redactor.sensitive_values(data)) if self._redactor else ()

    async def announce_policy(self, worker: str) -> None:
        """Record the policy bundle this worker decides with, before its first decision."""
        await self.audit_until_written(policy_loaded_audit(self.policy, datetime.now(UTC), worker))

    async def dead_letter(self, msg: Incoming, reason: str) -> None:
        """Park a message that cannot be processed (bounded copy, origin, reason) and audit it."""
        origin = (msg.topic, msg.partition, msg.offset)
        dlq = dead_letter_message(msg.key, msg.value, msg.headers, origin, reason)
        audit = dead_letter_audit(msg.key, msg.value, msg.headers, origin, reason, msg.received_at)
        await self._retrying("dead-letter", lambda: self._publish(topics.DEAD_LETTER.name, [dlq]))
        await self.audit_until_written(audit)
        self._count("dead_lettered")
        log.warning("dead-lettered %s: %s", msg.origin, reason[:300])

    async def claim(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Become the newest owner of newly assigned input partitions (a fencing epoch each)."""
        for topic, partition in partitions:
            if topic in ROLES:
                key = keys.fence(topic, partition)
                self.epochs[(topic, partition)] = await self._retrying(
                    "claim", functools.partial(self.store.claim, key)
                )
        log.info("claimed %s", sorted(f"{t}/{p}@{e}" for (t, p), e in self.epochs.items()))

    def release(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget partitions this worker lost: their messages are no longer ours to write."""
        for tp in partitions:
            self.epochs.pop(tp, None)

    async def _fence(self, msg: Incoming) -> Fence:
        if not self.fencing:
            return NO_FENCE
        await self.claimed.wait()  # a message may arrive while its assignment is being claimed
        epoch = self.epochs.get((msg.topic, msg.partition))
        if epoch is None:
            raise Fenced(f"{msg.origin}: partition not assigned to this worker")
        return Fence(ROLES.get(msg.topic, "esc"), epoch)

    async def _check_fence(self, msg: Incoming, current: int | None) -> Fence:
        """The fence to write with, after checking no newer owner claimed the partition."""
        fence = await self._fence(msg)
        if not fence.epoch or current is None or current == fence.epoch:
            return fence
        # Lanes of one partition run concurrently: one of ours may have claimed it again since
        # (after a wipe), so compare with our epoch as it is now, under one lock per partition.
        async with self._reclaiming.setdefault((msg.topic, msg.partition), asyncio.Lock()):
            fence = await self._fence(msg)
            current = await self.store.fence_epoch(keys.fence(msg.topic, msg.partition))
            if current == fence.epoch:
                return fence
            if current:
                raise Fenced(f"{msg.origin}: claimed by epoch {current}, ours is {fence.epoch}")
            # The claim vanished with a wiped Redis: claim again (epochs keep growing), once.
            await self.claim([(msg.topic, msg.partition)])
            return await self._fence(msg)

    def _fenced(self, msg: Incoming, why: str) -> None:
        self._count("fenced")
        log.warning("fenced, writing nothing for %s: %s", msg.origin, why)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a store/bus step until it succeeds: the partition waits, nothing is acked."""
        delay = 0.05
        while True:
            try:
                return await call()
            except (StoreUnavailable, BusError) as exc:
                self._count("retries")
                log.warning("%s failed, retrying in %.2fs: %s", what, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _decode(self, msg: Incoming, kind: type[T]) -> T:
        return self._expect(codec.decode(msg.key, msg.value, msg.headers), msg, kind)

    def _expect(self, event: WireModel, msg: Incoming, kind: type[T]) -> T:
        if not isinstance(event, kind):
            raise WireError(f"expected {kind.__name__} on {msg.topic}, got {type(event).__name__}")
        return event

    async def on_escalation(self, msg: Incoming) -> None:
        """Decide one escalation request (idempotent under redelivery)."""
        await self.ready.wait()
        try:
            await self._fence(msg)
            event = codec.decode(msg.key, msg.value, msg.headers)
            if self.grant_requests and isinstance(event, RenewalRequested | ReleaseRequested):
                if await self._admit(msg, event) is not None:  # the agent's own, verified
                    await self.grant_requests(msg, event)
                return
            request = self._expect(event, msg, EscalationRequested)
        except Fenced as exc:
            self._fenced(msg, str(exc))
            return
        except WireError as exc:
            await self.dead_letter(msg, str(exc))
            return
        # The first snapshot (reads only) is taken while the identity gate checks the
        # signature, to save its round trip; a retry of the decision reads afresh.
        first: list[asyncio.Task[Snapshot]] = [
            asyncio.ensure_future(self._snapshot(request, msg, recorded=True))]
        try:
            admitted = await self._admit(msg, request)
            if admitted is None:
                return
            admission = None if admitted is True else admitted
            assert not isinstance(admission, bool)
            await self._retrying("decide", lambda: self._decide(request, msg, admission, first))
        except Fenced as exc:
            self._fenced(msg, str(exc))
        finally:
            _discard(first)

    async def ensure_view(self) -> None:
        """Rebuild the Redis view from Kafka if it is absent (once, whoever asks)."""
        async with self._view_lock:
            if await self.store.view_epoch() is not None:
                return
            if self._rebuild is None:
                raise StoreUnavailable("grant view absent and no rebuild configured")
            log.warning("grant view absent in Redis: rebuilding it from %s", topics.GRANTS.name)
            restored = await self._rebuild()
            self._count("view_rebuilds")
            log.warning("grant view rebuilt: %d active grant(s) restored", restored)

    def _rate(self, request: EscalationRequested) -> RateLimit:
        rule = self.policy.rate_limit(self.agent_profile(request.agent_id))
        return RateLimit(rule.requests, rule.per_s * 1000) if rule else UNLIMITED

    def _rate_denial(self, request: EscalationRequested, retry_ms: str) -> ScopeDenial:
        rule = self.policy.rate_limit(self.agent_profile(request.agent_id))
        assert rule is not None
        return ScopeDenial(
            scope="*",
            rule=rule.rule,
            reason=f"agent {request.agent_id} is over the rate limit of its class "
            f"({rule.describe()}); a token frees up in {retry_ms} ms",
        )

    async def _snapshot(
        self, request: EscalationRequested, msg: Incoming, *, recorded: bool = False
    ) -> Snapshot:
        fence_key = keys.fence(msg.topic, msg.partition) if self.fencing else None
        rid = request.request_id if recorded else None
        return await self.store.snapshot(request.agent_id, fence_key, rid)

    async def _decide(
        self, request: EscalationRequested, msg: Incoming, admission: Admission | None = None,
        first: list[asyncio.Task[Snapshot]] | None = None,
    ) -> None:
        agent = self.agent_profile(request.agent_id)
        rate = self._rate(request)
        blocked_by = admission.denial() if admission is not None else None
        note: dict[str, object] = {}
        for attempt in range(4):
            # The first read also fetches the request's record (a redelivery), same round trip.
            snap = await (first.pop() if attempt == 0 and first else
                          self._snapshot(request, msg, recorded=attempt == 0))
            fence = await self._check_fence(msg, snap.fence_epoch)  # before any write
            if not snap.view_built:
                await self.ensure_view()
                continue
            if attempt == 0 and snap.recorded is not None:
                await self._announce(snap.recorded, None, msg)  # a redelivery: never decide twice
                return
            now = self._clock() if self._clock else snap.now
            # The epoch orders attempts across owners: a stale owner's attempt never wins.
            ctx = _Attempt(request, agent, snap.state,
                           RiskContext(agent=snap.risk, request=request.risk_score),
                           msg.received_at, now, blocked_by,
                           {**note, "attempt": attempt, "fence_epoch": fence.epoch}, admission)
            if self.approvals is not None and await self.approvals.hold(ctx):
                return  # held for approval: decided when approvers answer (streams.approvals)
            outcome, pending = await self._audit_first(ctx)
            try:  # a stall during the audit write may have cost us the partition
                await self._risk_fence(msg)
            except Fenced:
                owner = await self.store.fence_epoch(keys.fence(msg.topic, msg.partition))
                await self._void(outcome.audit, pending, str(owner))
                raise
            committed = await self.store.commit(
                outcome, received_at=ctx.received_at, now=now,
                max_grant_s=self.policy.max_grant_duration_s, fence=fence, rate=rate,
            )
            if committed.status == "fenced":
                await self._void(outcome.audit, pending, committed.blocked_reason)
                if (await self._fence(msg)).epoch != fence.epoch:  # our own re-claim (a wipe)
                    note = {"previous_attempt": "fenced by this worker's own re-claim"}
                    continue
                raise Fenced(f"{msg.origin}: agent written by epoch {committed.blocked_reason}")
            if committed.status != "blocked":
                break
            note = {"previous_attempt": f"blocked at commit ({committed.blocked_reason})"}
            if committed.blocked_reason == "rate":
                self._count("rate_limited")
                blocked_by, rate = self._rate_denial(request, committed.blocked_detail), UNLIMITED
            elif committed.blocked_reason == "view":
                await self.ensure_view()
            log.info("request %s blocked at commit (%s); deciding again",
                     request.request_id, committed.blocked_reason)
        await self._announce(committed, pending, msg)

    async def _void(self, attempt: AuditRecord, pending: AuditRecord | None, owner: str) -> None:
        """Audit that a fenced attempt never took effect (its own record is already written)."""
        if pending is None:  # a pending (fail-closed) record was never written: nothing to void
            await self.audit(attempt_fenced_audit(attempt, owner, datetime.now(UTC)))

    def _outcome(self, ctx: _Attempt, blocked_by: ScopeDenial | None = None) -> Outcome:
        evaluation = self.policy.evaluate(ctx.request, ctx.agent, ctx.risk, ctx.now)
        outcome = decide(
            ctx.request, evaluation, agent=ctx.agent, state=ctx.state,
            received_at=ctx.received_at, now=ctx.now, risk=ctx.risk,
            blocked_by=blocked_by or ctx.blocked_by, note=ctx.note,
        )
        return ctx.admission.bind(outcome) if ctx.admission is not None else outcome

    async def _audit_first(self, ctx: _Attempt) -> tuple[Outcome, AuditRecord | None]:
        """Audit the decision before its commit; if that fails, deny (its record is pending)."""
        outcome = self._outcome(ctx)
        try:
            await asyncio.wait_for(self.audit(outcome.audit), self._audit_timeout_s)
        except (BusError, TimeoutError) as exc:
            self._count("audit_fail_closed")
            log.error("audit not written for request %s of %s; denying it (fail closed): %s",
                      ctx.request.request_id, ctx.request.agent_id, exc)
            denial = ScopeDenial(
                scope="*", rule=AUDIT_UNAVAILABLE,
                reason=f"the audit stream could not be written ({type(exc).__name__}: "
                f"{str(exc)[:160] or 'timed out'}); no grant is issued without an audit record "
                "(fail closed): retry once the audit is available again",
            )
            denied = self._outcome(ctx, blocked_by=denial)
            return denied, denied.audit
        return outcome, None

    async def _announce(
        self, committed: Committed, pending: AuditRecord | None, msg: Incoming
    ) -> None:
        decision = committed.decision
        if decision is None:  # blocked every time: the next attempt starts over
            raise StoreUnavailable("agent state kept changing during the decision")
        # Stalled since the commit? Then the new owner announces it (found stored, unpublished).
        await self._risk_fence(msg)
        if committed.status == "existing" and committed.published:
            self._count("duplicates")
            dup = duplicate_audit(
                decision, committed.grant is not None, msg.origin, datetime.now(UTC)
            )
            await self.audit(dup)
            return
        if committed.status == "existing":  # stored before a crash, never published: finish it
            self._count("recovered")
            await self.audit(decision_audit(decision, {"recovered_from": msg.origin}))
        else:
            self._count(f"decided_{decision.outcome}")
        # The grant first, so whoever sees the decision can already find the grant.
        if committed.grant is not None:
            token = await self.emit_grants((committed.grant, None))
            if token is not None:
                decision = decision.model_copy(update={"consistency_token": token.encode()})
        await self.emit(topics.DECISIONS.name, decision)
        if pending is not None:  # a fail-closed denial: its record waits for the audit to return
            await self.audit_until_written(pending)
        await self.store.mark_published(
            decision, received_at=msg.received_at, max_grant_s=self.policy.max_grant_duration_s
        )

    async def on_risk(self, msg: Incoming) -> None:
        """Apply revocation rules to one risk signal; a bad signal revokes its key's agent."""
        await self.ready.wait()
        try:
            await self._fence(msg)
            try:
                signal = self._decode(msg, RiskObserved)
            except WireError as exc:
                await self.dead_letter(msg, str(exc))
                if await self._may_fail_safe(msg):
                    await self._fail_safe_revoke(msg, str(exc))
                return
            if await self._admit(msg, signal) is None:
                return
            await self._retrying("risk", lambda: self._risk(signal, msg))
        except Fenced as exc:
            self._fenced(msg, str(exc))

    async def _risk_fence(self, msg: Incoming) -> Fence:
        """Our fence, after checking the partition's current epoch in Redis (Fenced if moved).

        A decision no input message caused (partition -1: the approval sweep closing a window)
        has no partition to own; it was committed unfenced and its event id is fixed, so a
        second sweeper can only republish the same decision.
        """
        if not self.fencing or msg.partition < 0:
            return NO_FENCE
        current = await self.store.fence_epoch(keys.fence(msg.topic, msg.partition))
        return await self._check_fence(msg, current)

    async def _may_fail_safe(self, msg: Incoming) -> bool:
        """With identity on, only a validly signed unreadable signal revokes (no forged DoS)."""
        gate = self.identity
        if gate is None:
            return True
        agent_id = (msg.key or b"").decode(errors="replace")
        return await self._retrying("identity", lambda: gate.authentic_for(msg, agent_id))

    async def _risk(self, signal: RiskObserved, msg: Incoming) -> None:
        now = msg.received_at
        subject = signal.subject_agent_id
        agent = self.agent_profile(subject) if subject else None
        action = (
            RiskAction(
                revoke=True,
                rule="operator-revoke",
                reason=f"revoked by {signal.source}: {signal.detail or 'no reason given'}",
            )
            if signal.kind == OPERATOR_REVOKE_KIND
            else self.policy.on_risk(signal, agent, now)
        )
        revoked: tuple[str, ...] = ()
        token: ConsistencyToken | None = None
        fence = await self._risk_fence(msg)
        hide = self.sensitive({"signal": signal.model_dump(mode="json")})
        if action.revoke and subject:
            revoked, token = await self._revoke(
                subject, signal.signal_id, action, now, fence, hide
            )
        elif subject:
            await self.store.note_risk(subject, signal.severity, now + RISK_WINDOW)
        audit = risk_audit(signal, action, revoked, now)
        if token is not None:  # where the revocation landed: `allows(..., at_least=token)`
            audit = audit.model_copy(
                update={"inputs": {**audit.inputs, "consistency_token": token.encode()}}
            )
        await self.audit(audit, also=hide)

    async def _revoke(
        self,
        agent_id: str,
        cause_id: str,
        action: RiskAction,
        now: datetime,
        fence: Fence,
        hide: Sequence[str] = (),
    ) -> tuple[tuple[str, ...], ConsistencyToken | None]:
        plan = plan_revocation(
            cause_id,
            agent_id,
            action,
            now=now,
            max_grant_s=self.policy.max_grant_duration_s,
            margin_s=self._margin_s,
        )
        grants = await self.store.revoke_all(plan, fence)
        if grants is None:
            raise Fenced(f"revocation of {agent_id}: a newer owner wrote for this agent")
        agent_event, per_grant = revoked_events(plan, grants)
        spaces = {g.grant_id: namespaces_of(g.scopes) for g in grants}
        token = await self.emit_grants(
            *((e, spaces.get(e.grant_id)) for e in per_grant), (agent_event, None)
        )
        await self.audit(*(lifecycle_audit(e, now) for e in per_grant), also=hide)
        self._count("revocations")
        log.warning(
            "revoked %d grant(s) of %s (rule %s, cause %s)",
            len(grants),
            agent_id,
            plan.rule,
            cause_id,
        )
        return tuple(g.grant_id for g in grants), token

    async def _fail_safe_revoke(self, msg: Incoming, reason: str) -> None:
        """A risk signal we cannot read may be a revocation: revoke the agent its key names."""
        agent_id = (msg.key or b"").decode(errors="replace")
        if not re.match(AGENT_ID_PATTERN, agent_id):
            log.error(
                "undecodable risk signal at %s names no agent; dead-lettered only", msg.origin
            )
            return
        action = RiskAction(
            revoke=True,
            rule="undecodable-risk-signal",
            reason=f"a risk signal about this agent could not be read ({reason}); "
            "revoking to fail closed",
        )
        async def revoke() -> tuple[str, ...]:
            fence = await self._risk_fence(msg)
            cause = derive_id("undecodable", msg.origin, agent_id)
            revoked, _token = await self._revoke(agent_id, cause, action, msg.received_at, fence)
            return revoked

        await self._retrying("fail-safe revoke", revoke)

    async def sweep_expiries(self) -> int:
        """Announce grants that reached their absolute expiry (Redis TTL already ended them)."""
        if not self.ready.is_set() or (self.fencing and not self.epochs):
            return 0  # a worker that owns no partition (or lost them all) announces nothing
        if await self.store.view_epoch() is None:
            await self.ensure_view()  # a wiped Redis is rebuilt even when no request comes
        now = self._clock() if self._clock else await self.store.now()
        due = await self.store.due_expiries(now)
        live = [d for d in due if d.live]
        announce = [d.event for d in live]
        if live:
            await self.emit_grants(*((d.event, d.namespaces) for d in live))
        await self.audit(*(lifecycle_audit(e, now) for e in announce))
        await self.store.ack_expiries(due)
        for _ in announce:
            self._count("expired")
        return len(announce)
