"""The identity gate of the property world: real keys, a registry, the worker's ``IdentityGate``.

Imports broker, schemas, streams, tests. Each agent of the model has its own key pair (an agent key
store in a scratch directory) and a registry record; an operator key signs the risk signals (an
agent may only report about itself). The gate is the worker's own, verifying every message the
model delivers: signature, binding, freshness against the append time, replay (its nonces live in
the world's Redis), authority. The registry is the product's ``Registry`` (the view's state
without its Kafka follower): the model registers its agents once, before any event. The broker's
own keyring and trust anchor sign and verify what the worker writes (``signer``, ``trust``), as
streams/bootstrap.py builds them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from broker.adapters.crypto.keystore import (
    AgentKeyStore,
    OperatorDirectory,
    ensure_identity_files,
    load_operator,
)
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.crypto.trust import RecordTrust, ServiceDirectory
from broker.adapters.kafka.codec import Encoded
from broker.adapters.kafka.registry_view import Registry
from broker.adapters.redis.identity import IdentityStore
from broker.config import Settings
from broker.policy import Policy
from schemas.events import AgentKey, AgentProfile, AgentRecord, ModelInfo, RiskObserved, WireModel
from streams.identity.gate import IdentityGate
from tests.support.identities import own_keys

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)  # keys and records valid long before any test event


class StaticRegistry(Registry):
    """The product's registry state, already complete: nothing to catch up with."""

    def sync(self, timeout: float = 5.0) -> bool:
        """Nothing newer can exist (the model registered every agent up front)."""
        return True


class Identities:
    """Keys and registry records of the model's agents, and an operator key (made once)."""

    def __init__(self, workdir: Path, policy: Policy) -> None:
        self.settings = Settings(stack_dir=workdir, **own_keys())  # the model's keys only
        # The broker's keyring and trust anchor, the operator's key and the operators file.
        ensure_identity_files(self.settings)
        self.operator, self._operator_key = load_operator(self.settings.key_path("operator"))
        self.keys = AgentKeyStore.from_settings(self.settings)
        self.policy = policy
        self.records: dict[str, AgentRecord] = {}

    def register(self, agent_id: str, agent_class: str) -> None:
        """Give ``agent_id`` a key pair and a registry record (once)."""
        if agent_id in self.records:
            return
        keys = self.keys.load(agent_id) if self.keys.exists(agent_id) else \
            self.keys.generate(agent_id)
        threshold = 0.9 if agent_class == "fraud-detection" else 0.6
        profile = AgentProfile(agent_id=agent_id, agent_class=agent_class,
                               owner="props@example.com",
                               model=ModelInfo(name="m", version="1", digest="sha256:00"),
                               confidence_threshold=threshold)
        self.records[agent_id] = AgentRecord(
            agent_id=agent_id, profile=profile, revision=1, change="registered",
            changed_at=EPOCH, changed_by=self.operator, cause_id=f"register-{agent_id}",
            registered_at=EPOCH,
            keys=(AgentKey(kid=keys.current.kid, jwk=keys.current.jwk, added_at=EPOCH),))

    def sign(self, event: WireModel, message: Encoded, at: datetime) -> Encoded:
        """Sign as the author would, at ``at``: risk signals by the operator, else the agent."""
        if isinstance(event, RiskObserved):
            return sign_message(message, self._operator_key, self.operator, now=at)
        agent = (message.key or b"").decode()
        return sign_message(message, self.keys.load(agent).current, agent, now=at)

    def forge(self, message: Encoded, as_agent: str, at: datetime) -> Encoded:
        """Sign ``message`` with another agent's key (the gate must refuse it)."""
        return sign_message(message, self.keys.load(as_agent).current, as_agent, now=at)

    def signer(self) -> RecordSigner:
        """What signs every record the worker writes: the broker's keyring."""
        return RecordSigner(BrokerKeyring(self.settings.key_path("broker")))

    def trust(self) -> RecordTrust:
        """What verifies them: the chain of trust from the broker's anchor (the model never
        rotates the broker's key, so the anchor is the whole chain)."""
        return RecordTrust.from_files(self.settings.key_path("trust-anchor"),
                                      self.settings.key_path("services"),
                                      leeway_s=self.settings.signature_max_skew_s)

    def gate(self, redis_url: str, audit: Callable[..., Awaitable[None]],
             count: Callable[[str], None]) -> tuple[IdentityGate, IdentityStore]:
        """The worker's gate over these identities, with its nonce store on ``redis_url``."""
        store = IdentityStore.from_url(redis_url)
        gate = IdentityGate(
            OperatorDirectory(self.settings.key_path("operators")),
            ServiceDirectory(self.settings.key_path("services")), store, self.settings,
            audit, count,
            classes={n: (c.baseline, c.ceiling) for n, c in self.policy.classes.items()})
        registry = StaticRegistry()
        for record in self.records.values():
            registry.apply(record)
        gate.start(registry)  # type: ignore[arg-type]  # the view's state, without its follower
        return gate, store
