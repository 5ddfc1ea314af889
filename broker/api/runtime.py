"""What the API process runs: a grant view, Kafka clients, the Redis store, ack follower.

Imports adapters, sdk, config. Started and stopped by the app's lifespan; every piece is one per
process and shared by the request handlers (confluent-kafka producers and the view are
thread-safe; the async Redis client lives on the app's event loop). Every reader verifies what
it applies with one ``RecordTrust`` (the broker's chain of trust from the settings' anchor, kept
current by the JWKS view); the API's grant view acknowledges revocations as an enforcement point
with its own key (created and registered in the services file on first start).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import redis

from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import AckFollower
from broker.adapters.kafka.admin import admin_client, cluster_metadata
from broker.adapters.kafka.bus import Publisher, Record
from broker.adapters.kafka.edge import RefusalCollector
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.redis.store import RedisGrantStore
from broker.api.metrics import Metrics
from broker.config import Settings
from broker.errors import BrokerError
from broker.sdk.agent.client import DecisionWatcher
from broker.sdk.operator.client import AuditWatcher, operator_publisher
from broker.sdk.resource.view import GrantView
from schemas.events import AgentRevoked

ACK_HISTORY = timedelta(hours=1)


@dataclass
class Runtime:
    """The live components of one API process."""

    settings: Settings
    kafka: KafkaAccess  # the API's own Kafka user (role api), from the same settings
    metrics: Metrics = field(default_factory=Metrics)
    view: GrantView | None = None
    store: RedisGrantStore | None = None
    publisher: Publisher | None = None
    decisions: DecisionWatcher | None = None
    audits: AuditWatcher | None = None
    acks: AckFollower | None = None
    jwks: JwksView | None = None  # the broker's published token keys (/.well-known/jwks.json)
    trust: RecordTrust | None = None  # what every reader of this process verifies with
    enforcement_point: str = ""

    def start(self) -> None:
        """Connect everything (blocking: Kafka metadata, the view's bootstrap)."""
        s = self.settings
        self.enforcement_point = s.enforcement_point or f"permbroker-api.{socket.gethostname()}"
        self.store = RedisGrantStore.from_url(s.redis_url, margin_s=s.record_margin_s)
        # Everything the API relays (an agent's request it authenticated, an operator's
        # revocation) is signed with the operator key: the workers refuse unsigned events.
        self.publisher = operator_publisher(self.kafka, "/permbroker/api", s)
        self.jwks = JwksView.from_settings(s, self.kafka, wait_s=10)  # the key sets so far
        trust = self.trust = self.jwks.trust
        self.metrics.registry.register(RefusalCollector(trust.refusals))
        self.view = GrantView(
            self.kafka, trust=trust, on_event=self._on_event,
            staleness_bound_s=s.view_staleness_bound_s, probe_interval_s=s.view_probe_interval_s,
            token_wait_s=s.view_token_wait_s, max_entries=s.view_max_entries,
            enforcement_point=ensure_service(s, self.enforcement_point),
        )
        self.decisions = DecisionWatcher(self.kafka, trust=trust,
                                         max_entries=s.decisions_kept)
        self.audits = AuditWatcher(self.kafka, trust=trust, max_entries=s.decisions_kept)
        self.acks = AckFollower(self.kafka, datetime.now(UTC) - ACK_HISTORY,
                                self.metrics.ack_event, trust=trust)

    def verifier(self) -> RecordTrust:
        """The trust every reader here verifies with (BrokerError before the API started)."""
        if self.trust is None:
            raise BrokerError("the API has not started its readers yet")
        return self.trust

    def _on_event(self, record: Record, _applied_at: float) -> None:
        if isinstance(record.event, AgentRevoked):
            self.metrics.revoked(record.event)

    def stop(self) -> None:
        """Close what was started."""
        for part in (self.acks, self.audits, self.decisions, self.view, self.jwks):
            if part is not None:
                part.close()

    def kafka_problem(self) -> str:
        """'' when Kafka answers a metadata request within 2 s, else why not."""
        try:
            cluster_metadata(admin_client(self.kafka), 2.0)
        except BrokerError as exc:
            return str(exc)
        return ""

    def redis_problem(self) -> str:
        """'' when Redis answers a PING within 1 s, else why not."""
        client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1.0,
                                      socket_connect_timeout=1.0)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            return f"Redis at {_where(self.settings.redis_url)} did not answer: {exc}"
        finally:
            client.close()
        return ""


def _where(url: str) -> str:
    """host:port/db of a Redis URL, without any password."""
    return url.rsplit("@", 1)[-1].removeprefix("redis://")
