"""What the API process runs: a grant view, Kafka clients, the Redis store, ack follower.

Imports adapters, sdk, config. Started and stopped by the app's lifespan; every piece is one per
process and shared by the request handlers (confluent-kafka producers and the view are
thread-safe; the async Redis client lives on the app's event loop, the blocking one serves the
request threads and ``/readyz``). Who calls is checked against the operators and services files
and the registry (followed here); what the API relays is signed with its own service key and
carries the caller's assertion, so the workers judge it as the caller's own.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis
from confluent_kafka.admin import AdminClient

from broker.adapters.crypto.assertions import Identities
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import OperatorDirectory, ServiceDirectory, load_service
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import AckFollower
from broker.adapters.kafka.admin import admin_client, cluster_metadata
from broker.adapters.kafka.bus import Publisher, Record
from broker.adapters.kafka.codec import Encoded
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import RegistryView
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


@dataclass
class Runtime:
    """The live components of one API process."""

    settings: Settings
    kafka: KafkaAccess  # the API's own Kafka user (role api), from the same settings
    metrics: Metrics = field(init=False)
    throttle: Throttle = field(init=False)
    view: GrantView | None = None
    store: RedisGrantStore | None = None
    publisher: Publisher | None = None
    decisions: DecisionWatcher | None = None
    audits: AuditWatcher | None = None
    acks: AckFollower | None = None
    jwks: JwksView | None = None  # the broker's published token keys (/.well-known/jwks.json)
    registry: RegistryView | None = None
    identities: Identities | None = None
    enforcement_point: str = ""
    service: str = ""  # this API's service principal: it signs what it relays
    _service_key: SigningKey | None = None
    _redis: redis.Redis | None = None
    _admin: AdminClient | None = None

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.settings.metrics_history)
        self.throttle = Throttle(self.settings.api_rate_limit, self.settings.api_rate_window_s)

    def start(self) -> None:
        """Connect everything (blocking: Kafka metadata, the view's bootstrap)."""
        s = self.settings
        self.enforcement_point = s.enforcement_point or f"permbroker-api.{socket.gethostname()}"
        self.store = RedisGrantStore.from_url(s.redis_url, margin_s=s.record_margin_s)
        self._redis = redis.Redis.from_url(s.redis_url, socket_timeout=1.0,
                                           socket_connect_timeout=1.0)
        self._admin = admin_client(self.kafka)
        self.registry = RegistryView(self.kafka)
        self.registry.wait_ready(10)
        registry = self.registry
        self.identities = Identities(
            OperatorDirectory(s.key_path("operators")), ServiceDirectory(s.key_path("services")),
            registry, max_life_s=s.api_assertion_max_life_s, leeway_s=s.signature_max_skew_s,
            refresh=lambda: registry.sync(2.0))
        self.publisher = self._relay_publisher()
        self.view = GrantView(
            self.kafka, on_event=self._on_event,
            staleness_bound_s=s.view_staleness_bound_s, probe_interval_s=s.view_probe_interval_s,
            token_wait_s=s.view_token_wait_s, enforcement_point=self.enforcement_point,
        )
        self.decisions = DecisionWatcher(self.kafka, keep=s.decisions_kept)
        self.jwks = JwksView(self.kafka, issuer=s.token_issuer)
        self.jwks.wait_ready(10)  # the key set published so far (empty on a brand-new cluster)
        self.audits = AuditWatcher(self.kafka, keep=s.decisions_kept)
        self.acks = AckFollower(self.kafka, datetime.now(UTC) - ACK_HISTORY,
                                self.metrics.ack_event)

    def _relay_publisher(self) -> Publisher | None:
        """The producer of relayed calls (None without a service key: relaying answers 503)."""
        try:
            self.service, self._service_key = load_service(self.settings.key_path("service"))
        except BrokerError:
            return None
        return Publisher(self.kafka, source=f"/{self.service}")

    def relay(self, assertion: str) -> Publisher:
        """A publisher whose records carry ``assertion`` and are signed with the service key."""
        if self.publisher is None:
            raise BrokerError(f"the API has no service key at {self.settings.key_path('service')}"
                              " to relay with: run permbroker keys init")
        key, service = self._service_key, self.service
        assert key is not None

        def sign(message: Encoded) -> Encoded:
            carried = Encoded(message.key, message.value,
                              [*message.headers, (ASSERTION_HEADER, assertion.encode())])
            return sign_message(carried, key, service)

        return self.publisher.signing_with(sign)

    def spend(self, principal: str, claims: AssertionClaims) -> bool:
        """Use an assertion up (True the first time); StoreUnavailable if Redis cannot say."""
        assert self._redis is not None
        until = datetime.fromtimestamp(claims.exp + self.settings.signature_max_skew_s + 1, tz=UTC)
        return SpentAssertions(self._redis).spend(principal, claims.jti, until)

    def _on_event(self, record: Record, _applied_at: float) -> None:
        if isinstance(record.event, AgentRevoked):
            self.metrics.revoked(record.event)

    def stop(self) -> None:
        """Close what was started."""
        for part in (self.acks, self.audits, self.decisions, self.view, self.jwks,
                     self.registry):
            if part is not None:
                part.close()
        if self._redis is not None:
            self._redis.close()

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
            return f"Redis at {_where(self.settings.redis_url)} did not answer: {exc}"
        return ""


def _where(url: str) -> str:
    """host:port/db of a Redis URL, without any password."""
    return url.rsplit("@", 1)[-1].removeprefix("redis://")
