"""Resource-side grant view: follows a grant topic, answers checks from memory, fails closed.

Imports adapters, core and schemas.

Bootstraps from the start of the topic, then follows it. ``allows()`` is a dict lookup by agent
then scope; expiry is judged at check time against the absolute ``expires_at`` (never extended on
read). It denies with a reason until the view has caught up, when it has not been proven current
within its staleness bound (broker.delivery.freshness), for an agent one of whose events could
not be decoded, and, given ``at_least=token``, until it has applied the event the consistency token
names (waiting up to ``token_wait_s``). An ended grant id is remembered so it never comes back.
Every record is read through the decode edge with the view's ``trust``: only what the broker
signed is applied; a forged or unsigned record is refused, counted and changes nothing (it denies
no one), while one the broker signed but this view cannot read denies its agent (fail closed).
Nothing a record holds stops the view's thread. With an ``enforcement_point`` identity it
acknowledges each revocation it applies on the acks topic, signed with that point's key.
Given the workers' consumer group (``revocations_group``), it is also stale while revocation
signals wait unprocessed (Redis down, workers stuck): then every check is denied. A view of a
namespace topic (``permbroker.grants.<ns>``) is not ready, and denies every check saying why,
until a worker's signed routing announcement there names the namespace (the latest one counts).
That announcement also carries the namespace's degraded mode from the policy: with a grace bound,
while Kafka is unreachable the view keeps allowing grants it applied before it lost freshness,
until min(expiry, loss + grace) (``broker.delivery.freshness.grace_end``); a grant or renewal
applied after the loss is never honoured in grace, a revocation that arrives ends the agent's
grants at once, and a local ``grace_cap_s`` can only shorten the bound. A view of a tenant
(``tenant="acme"``, or built with a tenant's Kafka user, ``service@acme``) follows that tenant's
own grant topic of the same namespace (``permbroker.tenant.acme.grants[.<ns>]``): the only grant
topics that user may read; it denies every check once the latest announcement there names the
tenants with topics of their own and not its tenant (a tenant no longer declared: its grants'
revocations go to the shared log of record only). Kafka's refusal to let the view read its
topic (a READ withdrawn while it runs) is logged and is the problem a stale view reports.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from broker.adapters import tracing
from broker.adapters.crypto.service_key import ServiceIdentity
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import AckPublisher
from broker.adapters.kafka.admin import own_topic
from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.edge import ROLE_BROKER, Trust
from broker.adapters.kafka.follow import Follower
from broker.delivery.consistency import ConsistencyToken, parse_token
from broker.delivery.freshness import BrokerClock, Freshness, FreshnessTracker, grace_end
from broker.errors import BusError, InvalidConsistencyToken
from broker.sdk.resource.index import GrantIndex, Verdict
from broker.sdk.resource.revocation_watch import RevocationWatch
from schemas import topics
from schemas.events import AgentRevoked, GrantIssued, GrantRenewed, RoutingAnnounced

__all__ = ["Freshness", "GrantView", "Verdict"]
STATUS_EVERY_S = 10.0
READER = "grant-view"


class GrantView:
    """An in-memory, Kafka-fed view of active grants for one resource service."""

    def __init__(
        self,
        kafka: KafkaAccess,
        *,
        trust: Trust,
        topic: str = topics.GRANTS.name,
        on_event: Callable[[Record, float], None] | None = None,
        staleness_bound_s: float = 5.0,
        probe_interval_s: float = 0.5,
        token_wait_s: float = 2.0,
        enforcement_point: ServiceIdentity | None = None,
        revocations_group: str | None = None,
        max_entries: int = 100_000,
        grace_cap_s: float | None = None,
        tenant: str | None = None,
    ) -> None:
        # A tenant's service (``tenant``, or a tenant's Kafka user: service@acme, or the plain
        # service: the default tenant) reads its tenant's grant topic of the same namespace
        # when there is one, and applies only its tenant's grants, wherever it reads them
        # (None: every tenant's, from the shared topic, as the broker's own roles do).
        role, owner = topics.role_of(kafka.username)
        self.tenant = tenant or (owner if role in topics.TENANT_ROLES else None)
        self.topic = own_topic(kafka, topic, self.tenant) if self.tenant is not None else topic
        self.trust = trust
        self.bound_s = staleness_bound_s
        self.token_wait_s = token_wait_s
        self.enforcement_point = enforcement_point.name if enforcement_point else None
        self.namespace = topic.removeprefix(topics.GRANT_TOPIC_PREFIX) \
            if topic.startswith(topics.GRANT_TOPIC_PREFIX) else None
        self.routing: RoutingAnnounced | None = None  # the latest announcement read
        self.grace_cap_s = grace_cap_s  # a local override may only shorten the signed grace
        self._late: set[str] = set()  # grants applied while stale: never honoured in grace
        self._unrouted = self._routing_problem()
        self._probe_every = probe_interval_s
        self._on_event = on_event
        self._clock = time.monotonic
        self._index = GrantIndex(max_entries)
        self._broker_clock = BrokerClock(self._clock)
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._next_status = self._clock()
        # Every record, applied or refused, goes to _apply: a refused one may deny its agent.
        asked = self._clock()
        self._follower = Follower(kafka, self.topic, self._apply, trust=trust, reader=READER,
                                  name="permbroker-view", on_refused=self._apply,
                                  signed_by=ROLE_BROKER, on_tick=self._tick, autostart=False)
        self.errors = self._follower.errors
        self._tracker = self._bootstrap(asked)
        # With the workers' group id, pending revocation signals also make the view stale.
        self._watch = (RevocationWatch(kafka, revocations_group, self._clock)
                       if revocations_group else None)
        self._acks = AckPublisher(kafka, enforcement_point) if enforcement_point else None
        self.started_at = datetime.now(UTC)
        self._follower.start()
        # Probes run beside the consumer so a slow answer from Kafka never delays applying.
        self._prober = threading.Thread(target=self._probe_loop, name="permbroker-view-probe",
                                        daemon=True)
        self._prober.start()

    def _bootstrap(self, asked: float) -> FreshnessTracker:
        """From the start of every partition; the log end then is the first freshness proof."""
        tracker = FreshnessTracker(list(self._follower.started_ends), self._clock)
        for p, (low, high) in self._follower.started_ends.items():
            tracker.start_at(p, low)
            tracker.probed(p, high, asked)
        return tracker

    # --- checks (any thread) -------------------------------------------------------------------

    def allows(
        self,
        agent_id: str,
        scope: str,
        resource: str = "",
        now: datetime | None = None,
        *,
        at_least: ConsistencyToken | str | None = None,
    ) -> Verdict:
        """May ``agent_id`` use ``scope`` on ``resource`` right now? Denies with a reason."""
        floor = self._tracker.floor if self._watch is None else self._floor()  # hot path
        if floor is None or self._clock() - floor > self.bound_s or self._unrouted:
            return self._degraded(agent_id, scope, resource, now, at_least)
        if at_least is not None:
            problem = self._wait_for(at_least)
            if problem:
                return Verdict(False, problem, unavailable=True)
        return self._index.allows(agent_id, scope, resource, now)

    def _degraded(self, agent_id: str, scope: str, resource: str, now: datetime | None,
                  at_least: ConsistencyToken | str | None) -> Verdict:
        """A check while the view cannot prove freshness: fail closed, or in grace allow only a
        grant applied before freshness was lost (the index still judges expiry and revocation)."""
        fresh = self.freshness()
        if fresh.grace_until is None or at_least is not None:
            return Verdict(False, fresh.reason(), unavailable=True)
        verdict = self._index.allows(agent_id, scope, resource, now)
        if not verdict.allowed:
            return verdict
        if verdict.grant is None or verdict.grant.grant_id in self._late:
            what = "a baseline has no expiry to bound it" if verdict.grant is None \
                else f"grant {verdict.grant.grant_id} arrived after freshness was lost"
            return Verdict(False, f"{fresh.reason()}; {what}", unavailable=True)
        return Verdict(True, f"{verdict.reason}; degraded: {fresh.reason()}", verdict.grant)

    @property
    def grace_s(self) -> float:
        """The grace bound of this view's namespace: signed by the broker, capped locally."""
        if self.namespace is None or self.routing is None or self._unrouted:
            return 0.0
        grace = float(self.routing.grace_s.get(self.namespace, 0))
        return grace if self.grace_cap_s is None else min(grace, self.grace_cap_s)

    def _grace_end(self) -> float | None:
        """Monotonic end of the grace in force now, or None (fresh, or fail closed)."""
        watch = self._watch.tracker if self._watch is not None else None
        unreachable = self._tracker.silent(self.bound_s) and (
            watch is None or watch.silent(self.bound_s))
        lag = self._tracker.lag() + (watch.lag() if watch is not None else 0)
        end = grace_end(self._floor(), self.bound_s, self.grace_s, unreachable=unreachable,
                        lag=lag)
        return end if end is not None and self._clock() < end else None

    def caught_up(self, token: ConsistencyToken | str) -> str:
        """'' once the view has applied the event ``token`` names (waiting up to
        ``token_wait_s``), else why not: for checks made outside ``allows`` (token verifiers)."""
        return self._wait_for(token)

    def _wait_for(self, token: ConsistencyToken | str) -> str:
        """'' once the view has applied what ``token`` names on its topic, else why not."""
        try:
            parsed = parse_token(token) if isinstance(token, str) else token
        except InvalidConsistencyToken as exc:
            return f"{exc} (fail closed)"
        position = parsed.on(self.topic)
        if position is None:
            return ""  # the event did not go to this view's topic: nothing here depends on it
        nxt = self._tracker.next
        if position.partition not in nxt:
            return f"token names partition {position.partition}, unknown on {self.topic}"
        deadline = self._clock() + self.token_wait_s
        with self._cond:
            while nxt[position.partition] <= position.offset:
                left = deadline - self._clock()
                if left <= 0:
                    return (
                        f"grant view has applied {self.topic}@{position.partition} up to offset "
                        f"{nxt[position.partition] - 1}, the consistency token needs "
                        f"{position.offset}; waited {self.token_wait_s:g}s (fail closed)"
                    )
                self._cond.wait(left)
        return ""

    def grant_state(self, agent_id: str, grant_id: str, now: datetime | None = None) -> str:
        """'active', 'ended' (revoked, released, expired), 'unknown', or 'not-ready' while the
        view is not fresh enough to say (token verifiers then refuse: fail closed)."""
        floor = self._floor()
        if floor is None or self._clock() - floor > self.bound_s or self._unrouted:
            return "not-ready"
        return self._index.state(agent_id, grant_id, now)

    def time_floor(self) -> datetime | None:
        """A time the broker has certainly reached (from the log's append times), or None."""
        floor = self._broker_clock.floor_s()
        return datetime.fromtimestamp(floor, tz=UTC) if floor > 0 else None

    def active(self, agent_id: str, now: datetime | None = None) -> list[GrantIssued]:
        """The agent's grants that have not ended or expired."""
        return [v.grant for v in self._index.active(agent_id, now) if v.grant is not None]

    def _floor(self) -> float | None:
        """When the view (and, if watched, the workers' revocations) was last proven current."""
        floor = self._tracker.floor
        if self._watch is None or floor is None:
            return floor
        risk = self._watch.tracker.floor
        return None if risk is None else min(floor, risk)

    def _routing_problem(self) -> str:
        """Why no worker writes this topic ('' when one does): a tenant's topic whose tenant the
        latest announcement does not name, a namespace topic whose namespace it does not (the
        shared log of record is always written)."""
        tenant = topics.tenant_of_topic(self.topic)
        if tenant is not None and self.routing is not None and self.routing.tenants is not None \
                and tenant not in self.routing.tenants:
            served = ", ".join(self.routing.tenants) or "none"
            return (f"no worker writes tenant {tenant}'s topic {self.topic}: worker "
                    f"{self.routing.worker} writes the topics of tenants {served} (since "
                    f"{self.routing.announced_at.isoformat()})")
        if self.namespace is None:
            return ""
        if self.routing is None:
            return (f"no worker routes namespace '{self.namespace}' to {self.topic}: no worker "
                    "announced its routing there (route it: a ceiling naming the namespace, or "
                    "PERMBROKER_GRANT_NAMESPACES)")
        if self.namespace in self.routing.namespaces:
            return ""
        routed = ", ".join(self.routing.namespaces) or "none"
        return (f"no worker routes namespace '{self.namespace}' to {self.topic}: worker "
                f"{self.routing.worker} routes {routed} (since "
                f"{self.routing.announced_at.isoformat()})")

    def freshness(self) -> Freshness:
        """How current the view is (ready, staleness, lag, the last probe problem); a view of a
        namespace topic no worker routes is not ready, and says so (``unrouted``)."""
        own = self._freshness()
        if not own.fresh and (end := self._grace_end()) is not None:
            own = dataclasses.replace(own, grace_until=time.time() + end - self._clock())
        if self._unrouted and own.ready:
            return dataclasses.replace(own, ready=False, problem=self._unrouted,
                                       unrouted=self._unrouted)
        if self.errors.refused and not own.fresh:
            return dataclasses.replace(own, problem=self.errors.refused)
        return own

    def _freshness(self) -> Freshness:
        own = self._tracker.snapshot(self.bound_s, paused=self._follower.paused)
        if self._watch is None:
            return own
        risk = self._watch.tracker.snapshot(self.bound_s)
        if risk.fresh or not own.fresh:
            return own
        return Freshness(own.ready and risk.ready, risk.staleness_s, own.lag, self.bound_s,
                         risk.problem or "revocation signals pending", self._follower.paused)

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the view has caught up with the log as of its start."""
        deadline = self._clock() + timeout
        with self._cond:
            while not self._tracker.ready():
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # --- the following thread -----------------------------------------------------------------

    def _tick(self) -> None:
        """Between polls: the enforcement point's status and acknowledgements."""
        if self._acks is None:
            return
        now = self._clock()
        if now >= self._next_status and self._tracker.ready():
            self._next_status = now + STATUS_EVERY_S
            self._acks.status(self.topic, self.freshness(), self.started_at)
        self._acks.poll()

    def _probe_loop(self) -> None:
        while not self._stop.wait(self._probe_every):
            self._probe()
            if self._watch is not None:
                self._watch.probe()

    def _probe(self) -> None:
        asked = self._clock()
        try:
            ends = self._follower.ends(timeout=min(1.0, self.bound_s / 2))
        except BusError as exc:
            self._tracker.failed(f"cannot reach Kafka: {exc}")
            return
        with self._cond:
            for p, (_low, high) in ends.items():
                self._tracker.probed(p, high, asked)
            self._cond.notify_all()

    def _apply(self, record: Record) -> None:
        """Apply one record (or note why not); nothing in it may stop this thread. A child of
        the worker's decision when the record carries its trace context."""
        with tracing.span("permbroker.view.apply", parent=record.headers, attributes={
                "permbroker.event_id": getattr(record.event, "event_id", ""),
                "messaging.destination.name": self.topic}):
            self._applied(record)

    def _applied(self, record: Record) -> None:
        replayed = not self._tracker.ready()
        self._note_late(record)
        try:
            if self._foreign(record):
                return self._done(record)  # another tenant's grant: never applied here
            revoked = self._index.apply(record)
            if isinstance(record.event, RoutingAnnounced):
                self._announced(record.event)
            if record.event is not None and record.timestamp_ms > 0:  # a forgery moves no clock
                self._broker_clock.seen(record.timestamp_ms / 1000)
            applied_at = time.time()
            if self._on_event is not None:
                self._on_event(record, applied_at)
            if self._acks is not None and isinstance(revoked, AgentRevoked):
                self._acks.ack(revoked, record, applied_at, replayed=replayed)
        except Exception as exc:  # noqa: BLE001 - no record may stop the view's thread
            self.trust.refusals.add(READER, dataclasses.replace(
                record, event=None, reason="apply-failed",
                error=f"{type(exc).__name__}: {str(exc)[:200]}"))
        self._done(record)

    def _foreign(self, record: Record) -> bool:
        """Whether the record is a grant of another tenant than this view's."""
        return (self.tenant is not None and isinstance(record.event, GrantIssued)
                and record.event.tenant != self.tenant)

    def _done(self, record: Record) -> None:
        """The record's offset is applied (freshness counts it, applied or not)."""
        with self._cond:
            self._tracker.applied(record.partition, record.offset)
            self._cond.notify_all()

    def _note_late(self, record: Record) -> None:
        """Remember a grant applied while the view is stale (not delivered before the loss of
        freshness); forget them all once the view is proven current again."""
        floor = self._floor()
        stale = floor is not None and self._clock() - floor > self.bound_s
        if stale and isinstance(record.event, GrantIssued | GrantRenewed):
            self._late.add(record.event.grant_id)
        elif not stale and self._late:
            self._late.clear()

    def _announced(self, event: RoutingAnnounced) -> None:
        """The latest announcement decides (a worker restarted with other namespaces)."""
        if self.routing is None or event.announced_at >= self.routing.announced_at:
            self.routing = event
            self._unrouted = self._routing_problem()

    # --- lifecycle ------------------------------------------------------------------------------

    def pause(self, timeout: float = 5.0) -> None:
        """Stop applying events (maintenance, tests): the view goes stale and then denies."""
        self._follower.set_paused(True, timeout)

    def resume(self, timeout: float = 5.0) -> None:
        """Apply events again from where the view stopped."""
        self._follower.set_paused(False, timeout)

    def close(self) -> None:
        """Stop following the topic."""
        self._stop.set()
        self._prober.join(timeout=10)
        self._follower.close(timeout=10)
        if self._acks is not None:
            self._acks.close()
        if self._watch is not None:
            self._watch.close()

    def __enter__(self) -> GrantView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
