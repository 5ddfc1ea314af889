"""What every handler of the worker shares: the ``WorkerContext`` and the shape of a message.

Imports broker (core, ports, codec) and schemas; never faust (streams/app.py wires it), so the
handlers run in unit tests on the ports' in-memory twins. Each handler module (escalations,
risk, lifecycle, approvals, budgets, analytics, identity) takes the context in its constructor
and uses its public API only.

Nothing is acked silently: bad bytes go to the dead-letter topic (``dead_letter``), transient
store and bus failures are retried while the partition waits (``retrying``). Every message is
read through the decode edge (``read``: bounds, signature where the topic requires one, JSON
limits, schema) and every record the worker writes is signed by the broker's key (``signer``).
Every audit record has its sensitive values replaced by keyed HMACs before it is written
(``audit``). Fencing: the
worker claims an epoch per input partition when it is assigned it; a message of a partition it
does not hold, or one a newer owner claimed, writes nothing (``Fenced``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from broker.adapters.kafka import codec, edge
from broker.adapters.ports import NO_FENCE, Fence, GrantStore, Publisher
from broker.adapters.redis import keyspace as keys
from broker.audit.records import policy_loaded_audit
from broker.audit.redact import Redactor
from broker.delivery.consistency import ConsistencyToken, token_of
from broker.delivery.routing import GrantRouting
from broker.errors import BusError, Fenced, IdentityError, StoreError, StoreUnavailable, WireError
from broker.identity.rules import Principal
from broker.identity.tenants import Tenancy
from broker.policy import Policy
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, RoutingAnnounced, ScopeDenial, WireModel
from streams.dead_letter import dead_letter_audit, dead_letter_message
from streams.telemetry.figures import Figures

log = logging.getLogger("permbroker.worker")
T = TypeVar("T")
# ce_source of what this worker writes: which host and process wrote it (for operators, and for
# proving that a fenced worker wrote nothing).
SOURCE = f"/permbroker/worker/{socket.gethostname()}/{os.getpid()}"
# The input topics whose partitions are fenced, and the role their writes are fenced under.
ROLES = {topics.ESCALATIONS.name: "esc", topics.RISK.name: "risk",
         topics.APPROVALS.name: "appr"}
# A grant lifecycle event and the namespaces of the grant it concerns (None: unknown or all).
Routed = tuple[WireModel, frozenset[str] | tuple[str, ...] | None]
# Rebuilds the grant view from the grant topic; returns how many grants it restored.
Rebuild = Callable[[], Awaitable[int]]
# Adds the broker's ce_signature to a message (IdentityError when no key can sign).
Signer = Callable[[codec.Encoded], codec.Encoded]
READER = "worker"


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

    def read(self, trust: edge.Trust | None, expect: type[WireModel] | None = None) -> edge.Record:
        """This message through the decode edge (never raises)."""
        return edge.read(self.topic, self.partition, self.offset, int(self.timestamp * 1000),
                         self.key, self.value, self.headers, trust=trust, reader=READER,
                         expect=expect)


# The message the current task handles (set by the guard in streams/guard.py): a retry names
# the partition that waits.
HANDLING: ContextVar[Incoming | None] = ContextVar("permbroker_handling", default=None)


@dataclass(frozen=True)
class Waiting:
    """A message whose partition waits: since when, for which step, why."""

    topic: str
    partition: int
    offset: int
    step: str
    reason: str  # the error's class: a bounded metric label
    detail: str
    since: float


class Waits:
    """Messages waiting for a retry (Redis or Kafka unavailable): the partitions they hold up."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[str, int, int], Waiting] = {}

    def waiting(self, msg: Incoming | None, step: str, exc: BaseException) -> None:
        """``msg`` waits for ``step`` because of ``exc`` (kept since its first wait)."""
        if msg is None:
            return
        key = (msg.topic, msg.partition, msg.offset)
        first = self._waiting.get(key)
        self._waiting[key] = Waiting(msg.topic, msg.partition, msg.offset, step,
                                     type(exc).__name__, str(exc)[:200],
                                     first.since if first else time.monotonic())

    def done(self, msg: Incoming | None) -> None:
        """``msg`` no longer waits."""
        if msg is not None:
            self._waiting.pop((msg.topic, msg.partition, msg.offset), None)

    def partitions(self) -> list[Waiting]:
        """The longest wait of each waiting partition."""
        oldest: dict[tuple[str, int], Waiting] = {}
        for w in self._waiting.values():
            held = oldest.get((w.topic, w.partition))
            if held is None or w.since < held.since:
                oldest[(w.topic, w.partition)] = w
        return sorted(oldest.values(), key=lambda w: (w.topic, w.partition))


class Admission(Protocol):
    """What the identity gate says of an admitted event."""

    @property
    def signer(self) -> Principal | None:
        """Who signed it, verified (None: identity checks are off)."""

    def denial(self) -> ScopeDenial | None:
        """An outside denial (``decide``'s blocked_by) when the authentic agent may not act."""


class Gate(Protocol):
    """Identity checks before policy, and who the agents are (streams/identity/gate.py)."""

    ready: asyncio.Event  # set once the agent registry is loaded

    async def admit(self, msg: Incoming, event: WireModel) -> Admission | None:
        """Verify signature, key, freshness, replay and authority; None: rejected (audited)."""

    def profile(self, agent_id: str) -> AgentProfile | None:
        """The agent's profile (baseline and ceiling from its class)."""

    def standing(self, agent_id: str) -> ScopeDenial | None:
        """Why an agent may not be granted anything now (unknown, suspended...), or None."""

    async def authentic_for(self, msg: Incoming, agent_id: str) -> bool:
        """Whether an undecodable message is validly signed by the agent or an operator."""


@dataclass(frozen=True)
class Unchecked:
    """The admission of an event when identity checks are off: no signer, no refusal."""

    signer: None = None

    def denial(self) -> None:
        """Nothing to refuse."""
        return None


class OpenGate:
    """Identity checks off (tests, tools): every event is admitted, profiles come from policy."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.ready = asyncio.Event()
        self.ready.set()

    async def admit(self, msg: Incoming, event: WireModel) -> Admission | None:
        """Admitted, unverified."""
        return Unchecked()

    def profile(self, agent_id: str) -> AgentProfile | None:
        """The profile the policy bundle declares."""
        return self._policy.agent(agent_id)

    def standing(self, agent_id: str) -> ScopeDenial | None:
        """No registry: nothing to say."""
        return None

    async def authentic_for(self, msg: Incoming, agent_id: str) -> bool:
        """Unverifiable, so taken as authentic (a bad risk signal then fails closed)."""
        return True


class WorkerContext:
    """The policy, grant store and publisher of one worker, with its audit, fences, counters."""

    def __init__(
        self,
        policy: Policy,
        store: GrantStore,
        publisher: Publisher,
        *,
        margin_s: int = 3600,
        rebuild: Rebuild | None = None,
        fencing: bool = False,
        redactor: Redactor | None = None,
        audit_timeout_s: float = 5.0,
        routing: GrantRouting | None = None,
        signer: Signer | None = None,
        trust: edge.Trust | None = None,
    ) -> None:
        self.policy = policy  # the default tenant's; the others' are in tenancy
        self.tenancy = Tenancy(policy)
        self.store = store
        self.publisher = publisher
        self.margin_s = margin_s
        self.audit_timeout_s = audit_timeout_s
        self.routing = routing or GrantRouting()
        self.ready = asyncio.Event()  # set once the view is built and the policy announced
        self.counters: dict[str, int] = {}
        self.figures = Figures()  # latencies, decisions by rule, dead letters by reason
        # (topic, partition) -> the epoch this worker claimed when it was assigned it. With
        # fencing on, a message of a partition not in here is not ours: it is left alone.
        self.fencing = fencing
        self.epochs: dict[tuple[str, int], int] = {}
        self.claimed = asyncio.Event()  # clear while an assignment is being claimed
        self.claimed.set()
        self._reclaiming: dict[tuple[str, int], asyncio.Lock] = {}  # one re-claim at a time
        self._rebuild = rebuild
        self._redactor = redactor
        self._view_lock = asyncio.Lock()
        self.waits = Waits()  # messages whose partition waits for a retry, and why
        self.signer = signer  # None only in unit tests on the in-memory twins
        self.trust = trust  # None only in unit tests: nothing read is then signature-checked
        self.trusted = asyncio.Event()  # set once the trust follows the published key sets
        # The registered tenant of an agent: where its decisions and grants go besides the
        # shared topics (bootstrap sets it from the registry; unit tests: the default tenant).
        self.tenant_of: Callable[[str], str] = lambda _agent: topics.DEFAULT_TENANT

    # --- counting, publishing, auditing ----------------------------------------------------

    def policy_for(self, agent: AgentProfile | None) -> Policy:
        """The policy that decides for ``agent``: its registered tenant's (the default's for an
        unknown agent). An agent of a tenant without a bundle has an empty ceiling (the gate),
        so the default policy it falls back to allows it nothing."""
        if agent is None:
            return self.policy
        return self.tenancy.policy(agent.tenant) or self.policy

    def count(self, name: str) -> None:
        """Count one thing that happened (served as ``permbroker_worker_events_total``)."""
        self.counters[name] = self.counters.get(name, 0) + 1

    def sign(self, message: codec.Encoded) -> codec.Encoded:
        """The message with the broker's signature; BusError (retried: nothing is written
        unsigned, the partition waits) when no key can sign now."""
        if self.signer is None:
            return message
        try:
            return self.signer(message)
        except IdentityError as exc:
            raise BusError(f"cannot sign what the broker writes: {exc}") from exc

    def encode(self, event: WireModel) -> codec.Encoded:
        """An event as the broker writes it: a signed CloudEvent."""
        return self.sign(codec.encode(event, source=SOURCE))

    async def emit(self, topic: str, *events: WireModel) -> None:
        """Encode, sign and publish events to one topic, waiting for Kafka's acknowledgement.

        A decision (or answer) about an agent of a tenant with topics of its own also goes to
        its tenant's decision topic, in the same go: that is the one its agents read.
        """
        if not events:
            return
        encoded = [self.encode(e) for e in events]
        copies = [(own, message) for event, message in zip(events, encoded, strict=True)
                  if (own := self._tenant_topic(topic, event)) != topic]
        if copies:
            await self.publisher.publish_many([*((topic, m) for m in encoded), *copies])
        else:
            await self.publisher.publish(topic, encoded)

    def _tenant_topic(self, topic: str, event: WireModel) -> str:
        """Where a copy of ``event`` goes for its agent's tenant (``topic``: nowhere else, and
        for an answer about no agent, such as an operator's key rotation)."""
        agent = _agent_of(event)
        tenant = self.tenant_of(agent) if agent and topic == topics.DECISIONS.name else ""
        return topics.for_tenant(topic, tenant) if tenant in self.routing.tenants else topic

    async def emit_grants(self, *items: Routed) -> ConsistencyToken | None:
        """Publish grant lifecycle events to every topic their routing names (its agent's
        tenant's among them), in one go.

        Returns the consistency token of what was written (None if the publisher cannot tell).
        """
        routed = [
            (topic, self.encode(copy))
            for event, namespaces in items
            for topic, copy in self.routing.route(event, namespaces,
                                                  self.tenant_of(_agent_of(event)))
        ]
        positions = await self.publisher.publish_many(routed)
        return token_of(list(positions)) if positions else None

    async def audit(self, *records: AuditRecord, also: Sequence[str] = ()) -> None:
        """Write audit records (sensitive values as HMACs) to the raw audit topic; await the ack."""
        if self._redactor is not None:
            records = tuple(self._redactor.redact(r, also) for r in records)
        await self.emit(topics.AUDIT_RAW.name, *records)

    async def audit_until_written(self, *records: AuditRecord) -> None:
        """``audit``, retried until Kafka takes it (the caller waits: nothing goes unaudited)."""
        await self.retrying("audit", lambda: self.audit(*records))

    def sensitive(self, data: dict[str, object]) -> tuple[str, ...]:
        """The sensitive values of an input, to hide wherever they are quoted."""
        return tuple(self._redactor.sensitive_values(data)) if self._redactor else ()

    async def announce_routing(self, worker: str, also: Sequence[str] = ()) -> None:
        """Announce the routing on the grant topics it writes and on ``also`` (existing ones it
        does not: ``GrantRouting.announcements``), so a view of a topic nobody writes denies."""
        event = RoutingAnnounced(worker=worker, namespaces=(), announced_at=datetime.now(UTC),
                                 grace_s=dict(self.policy.degraded_grace_s))
        if pairs := self.routing.announcements(event, also):
            await self.publisher.publish_many([(t, self.encode(e)) for t, e in pairs])

    async def announce_policy(self, worker: str) -> None:
        """Record the policy bundle this worker decides with, before its first decision."""
        await self.audit_until_written(policy_loaded_audit(self.policy, datetime.now(UTC), worker))

    async def dead_letter(self, msg: Incoming, reason: str, code: str = "unprocessable") -> None:
        """Park a message that cannot be processed (bounded copy, origin, reason) and audit it;
        ``code`` (a finite set: error codes) is the reason its metric counts it under."""
        origin = (msg.topic, msg.partition, msg.offset)
        dlq = dead_letter_message(msg.key, msg.value, msg.headers, origin, reason)
        audit = dead_letter_audit(msg.key, msg.value, msg.headers, origin, reason, msg.received_at)
        await self.retrying(
            "dead-letter", lambda: self.publisher.publish(topics.DEAD_LETTER.name, [dlq])
        )
        await self.audit_until_written(audit)
        self.count("dead_lettered")
        self.figures.dead_lettered(code)
        log.warning("dead-lettered %s: %s", msg.origin, reason[:300])

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a store/bus step until it succeeds: the partition waits (shown in ``waits``,
        hence in metrics and readiness, with why), nothing is acked."""
        delay = 0.05
        msg = HANDLING.get()
        try:
            while True:
                try:
                    return await call()
                except (StoreUnavailable, BusError) as exc:
                    self.count("retries")
                    self.waits.waiting(msg, what, exc)
                    log.warning("%s failed, retrying in %.2fs: %s", what, delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self.waits.done(msg)

    def read(self, msg: Incoming) -> WireModel:
        """The message's event through the decode edge; WireError (with its reason) if refused."""
        record = msg.read(self.trust)
        if record.event is None:
            raise WireError(record.error or "refused", code=record.reason or "undecodable")
        return record.event

    def decode(self, msg: Incoming, kind: type[T]) -> T:
        """The message's event, if it is a ``kind``; WireError otherwise."""
        return expect(self.read(msg), msg, kind)

    # --- the grant view --------------------------------------------------------------------

    async def start(self, worker: str) -> None:
        """Refuse an evicting store, build the view if it was never built (or wiped), record
        the policy this worker decides with; then take messages (``ready``)."""
        while True:
            try:
                await self.store.check_config()
                await self.ensure_view()
                break
            except (StoreError, BusError) as exc:
                log.error("worker not ready: %s (retrying)", exc)
                await asyncio.sleep(1.0)
        await self.announce_policy(worker)
        log.info("worker ready: policy %s revision %s", self.policy.source, self.policy.revision)
        self.ready.set()

    async def ensure_view(self) -> None:
        """Rebuild the grant view from Kafka if it is absent (once, whoever asks)."""
        async with self._view_lock:
            if await self.store.view_epoch() is not None:
                return
            if self._rebuild is None:
                raise StoreUnavailable("grant view absent and no rebuild configured")
            log.warning("grant view absent in Redis: rebuilding it from %s", topics.GRANTS.name)
            restored = await self._rebuild()
            self.count("view_rebuilds")
            log.warning("grant view rebuilt: %d active grant(s) restored", restored)

    # --- fencing ---------------------------------------------------------------------------

    async def claim(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Become the newest owner of newly assigned input partitions (a fencing epoch each)."""
        for topic, partition in partitions:
            if topic in ROLES:
                key = keys.fence(topic, partition)
                self.epochs[(topic, partition)] = await self.retrying(
                    "claim", functools.partial(self.store.claim, key)
                )
        log.info("claimed %s", sorted(f"{t}/{p}@{e}" for (t, p), e in self.epochs.items()))

    def release(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget partitions this worker lost: their messages are no longer ours to write."""
        for tp in partitions:
            self.epochs.pop(tp, None)

    def fence_key(self, msg: Incoming) -> str | None:
        """The key of the message's partition fence (None with fencing off)."""
        return keys.fence(msg.topic, msg.partition) if self.fencing else None

    async def fence(self, msg: Incoming) -> Fence:
        """The fence to write with for ``msg`` (Fenced if its partition is not ours)."""
        if not self.fencing:
            return NO_FENCE
        await self.claimed.wait()  # a message may arrive while its assignment is being claimed
        epoch = self.epochs.get((msg.topic, msg.partition))
        if epoch is None:
            raise Fenced(f"{msg.origin}: partition not assigned to this worker")
        return Fence(ROLES.get(msg.topic, "esc"), epoch, keys.fence(msg.topic, msg.partition))

    async def check_fence(self, msg: Incoming, current: int | None) -> Fence:
        """The fence to write with, after checking no newer owner claimed the partition."""
        fence = await self.fence(msg)
        if not fence.epoch or current is None or current == fence.epoch:
            return fence
        # Lanes of one partition run concurrently: one of ours may have claimed it again since
        # (after a wipe), so compare with our epoch as it is now, under one lock per partition.
        async with self._reclaiming.setdefault((msg.topic, msg.partition), asyncio.Lock()):
            fence = await self.fence(msg)
            current = await self.store.fence_epoch(keys.fence(msg.topic, msg.partition))
            if current == fence.epoch:
                return fence
            if current:
                raise Fenced(f"{msg.origin}: claimed by epoch {current}, ours is {fence.epoch}")
            # The claim vanished with a wiped Redis: claim again (epochs keep growing), once.
            await self.claim([(msg.topic, msg.partition)])
            return await self.fence(msg)

    async def partition_fence(self, msg: Incoming) -> Fence:
        """Our fence, after reading the partition's current epoch from the store (Fenced if moved).

        A decision no input message caused (partition -1: the approval sweep closing a window)
        has no partition to own; it was committed unfenced and its event id is fixed, so a
        second sweeper can only republish the same decision.
        """
        if not self.fencing or msg.partition < 0:
            return NO_FENCE
        current = await self.store.fence_epoch(keys.fence(msg.topic, msg.partition))
        return await self.check_fence(msg, current)

    def fenced(self, msg: Incoming, why: str) -> None:
        """Count and log a message this worker wrote nothing for (a newer owner has it)."""
        self.count("fenced")
        log.warning("fenced, writing nothing for %s: %s", msg.origin, why)


def expect(event: WireModel, msg: Incoming, kind: type[T]) -> T:
    """``event`` if it is a ``kind``; WireError naming the topic otherwise."""
    if not isinstance(event, kind):
        raise WireError(f"expected {kind.__name__} on {msg.topic}, got {type(event).__name__}")
    return event


def _agent_of(event: WireModel) -> str:
    """The agent a grant lifecycle event is about ('' when it names none)."""
    agent = getattr(event, "agent_id", None)
    return agent if isinstance(agent, str) else ""
