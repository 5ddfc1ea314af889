"""What the API process runs: a grant view, Kafka clients, the Redis store, ack follower.

Imports adapters, sdk, config. Started and stopped by the app's lifespan; every piece is one per
process and shared by the request handlers (confluent-kafka producers and the view are
thread-safe; the async Redis client lives on the app's event loop, the blocking one serves the
request threads and ``/readyz``). Every reader verifies what it applies with one ``RecordTrust``
(the broker's chain of trust from the settings' anchor, kept current by the JWKS view). Who calls
is checked against the operators and services files and the registry (followed here). The API is
one resource service, with its own key (created and registered in the services file on first
start): its grant view acknowledges revocations with it, and what it relays is signed with it and
carries the caller's assertion, so the workers judge it as the caller's own.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from confluent_kafka.admin import AdminClient

from broker.adapters.crypto.assertions import Identities
from broker.adapters.crypto.keystore import OperatorDirectory, load_operator_scopes
from broker.adapters.crypto.service_key import ServiceIdentity, ensure_service
from broker.adapters.crypto.trust import RecordTrust, ServiceDirectory
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import AckFollower
from broker.adapters.kafka.admin import admin_client, cluster_metadata, probe
from broker.adapters.kafka.bus import Publisher, Record
from broker.adapters.kafka.codec import Encoded
from broker.adapters.kafka.edge import RefusalCollector
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import RegistryView
from broker.adapters.redis.calls import close, shown, sync_client
from broker.adapters.redis.identity import SpentAssertions
from broker.adapters.redis.store import RedisGrantStore
from broker.api.metrics import Metrics
from broker.api.throttle import Throttle
from broker.config import Settings
from broker.errors import BrokerError
from broker.identity.rules import AssertionClaims
from broker.sdk.agent.client import DecisionWatcher
from broker.sdk.operator.client import AuditWatcher
from broker.sdk.resource.view import GrantView
from schemas.events import AgentRevoked
from schemas.signing import ASSERTION_HEADER

ACK_HISTORY = timedelta(hours=1)
log = logging.getLogger("permbroker.api")


@dataclass
class Runtime:
    """The live components of one API process."""

    settings: Settings
    kafka: KafkaAccess  # the API's own Kafka user (role api), from the same settings
    metrics: Metrics = field(init=False)
    throttle: Throttle = field(init=False)
    operator_tenants: dict[str, frozenset[str]] = field(init=False)
    view: GrantView | None = None
    store: RedisGrantStore | None = None
    publisher: Publisher | None = None
    decisions: DecisionWatcher | None = None
    audits: AuditWatcher | None = None
    acks: AckFollower | None = None
    jwks: JwksView | None = None  # the broker's published token keys (/.well-known/jwks.json)
    trust: RecordTrust | None = None  # what every reader of this process verifies with
    registry: RegistryView | None = None
    identities: Identities | None = None
    enforcement_point: str = ""
    started: bool = False  # every reader is up: the routes may serve
    start_problem: str = ""  # why the last start failed (Kafka down): /readyz says it
    identity: ServiceIdentity | None = None  # this API as a resource service: acks, relays
    _redis: redis.Redis | None = None
    _admin: AdminClient | None = None

    def __post_init__(self) -> None:
        # Operators scoped to tenants: they see only their tenants' agents (a bad file: no start).
        self.operator_tenants = load_operator_scopes(self.settings.operator_tenants_file)
        self.metrics = Metrics(self.settings.metrics_history)
        self.throttle = Throttle(self.settings.api_rate_limit, self.settings.api_rate_window_s)

    def connect(self) -> None:
        """Make the clients /readyz asks (no I/O yet): they report Kafka and Redis from now."""
        s = self.settings
        self.enforcement_point = s.enforcement_point or f"permbroker-api.{socket.gethostname()}"
        self.store = RedisGrantStore.from_url(s.redis_url, margin_s=s.record_margin_s)
        self._redis = sync_client(s.redis_url, 1.0)
        self._admin = admin_client(self.kafka)

    def start_until_ready(self, stop: threading.Event, retry_s: float = 2.0) -> None:
        """``start``, again every ``retry_s`` while it fails (Kafka down), until
        ``stop``; ``start_problem`` holds the last failure for /readyz."""
        while not stop.is_set():
            try:
                self.start()
                return
            except BrokerError as exc:
                self.start_problem = str(exc)
                log.warning("API not started (retrying every %.0fs): %s", retry_s, exc)
                self.stop(readers_only=True)
            stop.wait(retry_s)

    def start(self) -> None:
        """Start every reader (blocking: Kafka metadata, the view's bootstrap); fails at once,
        naming the cause, when Kafka does not answer. (Redis is not needed to start: the routes
        that use it answer 503 while it is down, and /readyz names it.)"""
        s = self.settings
        probe(self.kafka, timeout=2.0)
        self.jwks = JwksView.from_settings(s, self.kafka, wait_s=10)  # the key sets so far
        trust = self.trust = self.jwks.trust
        self.registry = RegistryView(self.kafka, trust)
        self.registry.wait_ready(10)
        registry = self.registry
        self.identities = Identities(
            OperatorDirectory(s.key_path("operators")), ServiceDirectory(s.key_path("services")),
            registry, max_life_s=s.api_assertion_max_life_s, leeway_s=s.signature_max_skew_s,
            refresh=lambda: registry.sync(2.0))
        identity = self.identity = ensure_service(s, self.enforcement_point)
        self.publisher = Publisher(self.kafka, source=f"/{identity.principal}")
        self.view = GrantView(
            self.kafka, trust=trust, on_event=self._on_event,
            staleness_bound_s=s.view_staleness_bound_s, probe_interval_s=s.view_probe_interval_s,
            token_wait_s=s.view_token_wait_s, max_entries=s.view_max_entries,
            enforcement_point=identity,
        )
        self.decisions = DecisionWatcher(self.kafka, trust=trust,
                                         max_entries=s.decisions_kept)
        self.audits = AuditWatcher(self.kafka, trust=trust, max_entries=s.decisions_kept)
        self.acks = AckFollower(self.kafka, datetime.now(UTC) - ACK_HISTORY,
                                self.metrics.ack_event, trust=trust)
        self.metrics.registry.register(RefusalCollector(trust.refusals))  # once: on success
        self.started, self.start_problem = True, ""

    def tenant_of(self, agent_id: str) -> str | None:
        """The registered tenant of an agent (None: not registered, or the registry not read)."""
        record = self.registry.get(agent_id) if self.registry is not None else None
        return record.profile.tenant if record is not None else None

    def sees(self, principal: str, agent_id: str | None) -> bool:
        """Whether ``principal`` may see agent ``agent_id``: an operator or service scoped to
        tenants sees only registered agents of its tenants (and nothing about no agent);
        everyone else, as the route allows."""
        own = self.operator_tenants.get(principal)
        return own is None or (agent_id is not None and self.tenant_of(agent_id) in own)

    def verifier(self) -> RecordTrust:
        """The trust every reader here verifies with (BrokerError before the API started)."""
        if self.trust is None:
            raise BrokerError("the API has not started its readers yet")
        return self.trust

    def relay(self, assertion: str) -> Publisher:
        """A publisher whose records carry ``assertion`` and are signed with the API's key."""
        if self.publisher is None or self.identity is None:
            raise BrokerError("the API has not started its publisher yet")
        identity = self.identity

        def sign(message: Encoded) -> Encoded:
            carried = [*message.headers, (ASSERTION_HEADER, assertion.encode())]
            return identity.sign(Encoded(message.key, message.value, carried))

        return self.publisher.signing_with(sign)

    def spend(self, principal: str, claims: AssertionClaims) -> bool:
        """Use an assertion up (True the first time); StoreUnavailable if Redis cannot say."""
        assert self._redis is not None
        until = datetime.fromtimestamp(claims.exp + self.settings.signature_max_skew_s + 1, tz=UTC)
        return SpentAssertions(self._redis).spend(principal, claims.jti, until)

    def _on_event(self, record: Record, _applied_at: float) -> None:
        if isinstance(record.event, AgentRevoked):
            self.metrics.revoked(record.event)

    def stop(self, *, readers_only: bool = False) -> None:
        """Close what was started (``readers_only``: the readers of a failed start, to retry)."""
        for name in ("acks", "audits", "decisions", "view", "jwks", "registry"):
            part = getattr(self, name)
            if part is not None:
                part.close()
                setattr(self, name, None)
        self.trust = self.identities = self.publisher = None
        if self._redis is not None and not readers_only:
            close(self._redis)  # a cluster client's startup-node connections too

    def kafka_problem(self) -> str:
        """'' when Kafka answers a metadata request within 2 s, else why not."""
        if self._admin is None:
            return "not connected to Kafka yet"
        try:
            cluster_metadata(self._admin, 2.0)
        except BrokerError as exc:
            return str(exc)
        return ""

    def redis_problem(self) -> str:
        """'' when Redis answers a PING within 1 s, else why not."""
        if self._redis is None:
            return "not connected to Redis yet"
        try:
            self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            return f"Redis at {shown(self.settings.redis_url)} did not answer: {exc}"
        return ""
