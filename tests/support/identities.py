"""Test identities: pool agents get their own keys and are registered by an operator on first use.

Also the API credentials of the HTTP tests: assertions signed by an agent's, a service's or an
operator's own key, minted per request.
Imports broker and schemas. The harness signs what it publishes with the key of the agent the
message is keyed by (as that agent would), so the suite runs with signature checks on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx

from broker.adapters.crypto.assertions import mint
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import AgentKeyStore, add_operator, load_operator
from broker.adapters.crypto.service_key import register_service
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.admin import own_topic
from broker.adapters.kafka.codec import Encoded
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.config import Settings
from broker.identity.tenants import qualify
from broker.policy import Policy
from broker.sdk.agent.client import AgentClient
from broker.sdk.agent.identity import keyed_signer
from broker.sdk.operator.client import OperatorClient
from broker.stack.credentials import role_access, role_settings
from schemas import topics
from schemas.events import AgentProfile, ModelInfo

BATCH = 25


_TRUST: dict[Path, JwksView] = {}


def shared_trust(settings: Settings) -> RecordTrust:
    """The chain of trust of the test session's broker (one JWKS view per anchor, shared)."""
    anchor = settings.key_path("trust-anchor")
    if anchor not in _TRUST:
        _TRUST[anchor] = JwksView.from_settings(settings, role_access(settings, topics.SERVICE))
    return _TRUST[anchor].trust


def close_shared_trust(settings: Settings | None = None) -> None:
    """Stop the shared JWKS view of ``settings`` (default: all of them), before the services
    they read are stopped."""
    for anchor in [settings.key_path("trust-anchor")] if settings is not None else list(_TRUST):
        view = _TRUST.pop(anchor, None)
        if view is not None:
            view.close()


class Registrar:
    """Registers pool agents (profiles from the test bundle's Agents seed) in batches."""

    def __init__(self, settings: Settings, seed: Policy) -> None:
        self.store = AgentKeyStore.from_settings(settings)
        self._seed = {a.agent_id: a for a in seed.agents()}
        self._order = list(self._seed)
        # Registered earlier (another registrar on the same stack): never registered twice.
        operator = role_access(settings, topics.OPERATOR)
        self._done = set(read_registry(operator, shared_trust(settings)).agent_ids())
        self.operator = OperatorClient(settings, operator, trust=shared_trust(settings))

    def ensure(self, agent_id: str) -> str:
        """Register ``agent_id`` (and the next few of its kind) unless already registered."""
        if agent_id in self._done:
            return agent_id
        prefix = agent_id.rstrip("0123456789")
        start = self._order.index(agent_id)
        batch = [a for a in self._order[start:]
                 if a.startswith(prefix) and a not in self._done][:BATCH]
        commands = []
        for agent in batch:
            keys = self.store.load(agent) if self.store.exists(agent) else \
                self.store.generate(agent)
            commands.append(self.operator.register_command(self._seed[agent], keys.current.jwk,
                                                           reason="test pool"))
        self.operator.run_many(commands)
        self._done.update(batch)
        return agent_id

    def seed(self, agent_id: str) -> AgentProfile:
        """The profile the agent was registered with (from the test bundle)."""
        return self._seed[agent_id]

    def twins(self, name: str, tenants: tuple[str, ...], *, agent_class: str = "fraud-detection",
              confidence_threshold: float = 0.9) -> dict[str, str]:
        """Register the agent ``name`` in each of ``tenants`` (one id per tenant, each with its
        own key); the ids by tenant."""
        ids = {tenant: qualify(tenant, name) for tenant in tenants}
        commands = []
        for tenant, agent in ids.items():
            keys = self.store.generate(agent)
            profile = AgentProfile(agent_id=agent, agent_class=agent_class, tenant=tenant,
                                   owner=f"ops@{tenant}.example",
                                   confidence_threshold=confidence_threshold,
                                   model=ModelInfo(name="gbm", version="1.0",
                                                   digest="sha256:00"))
            commands.append(self.operator.register_command(profile, keys.current.jwk))
        answers = self.operator.run_many(commands)
        assert all(a.outcome == "done" for a in answers), answers
        self._done.update(ids.values())
        return ids

    def close(self) -> None:
        """Stop reading answers."""
        self.operator.close()


def harness_signer(store: AgentKeyStore) -> Callable[[Encoded], Encoded]:
    """Sign a message as the agent it is keyed by, when the harness holds that agent's key."""
    return keyed_signer(store)


def service_topic(settings: Settings, name: str) -> str:
    """The topic the plain service user reads for grant topic ``name``: with tenants declared
    (the integration stack), the default tenant's own."""
    return own_topic(role_access(settings, topics.SERVICE), name, topics.DEFAULT_TENANT)


def agent_client(settings: Settings, agent_id: str, **options: bool) -> AgentClient:
    """The agent's SDK client, signing with the agent's own key from the test key store."""
    return AgentClient(agent_id, role_access(settings, topics.AGENT), trust=shared_trust(settings),
                       keys=AgentKeyStore.from_settings(settings), **options)


def pool_taker(run_id: str, registrar: Registrar, classes: tuple[tuple[str, str, float], ...],
               pool: int) -> Callable[[str], str]:
    """Hands out each pool agent of a class suffix once, registered before it is handed out."""
    counters = {suffix: itertools.count() for suffix, _cls, _t in classes}

    def take(kind: str = "f") -> str:
        n = next(counters[kind])
        assert n < pool, "agent pool exhausted: raise POOL"
        return registrar.ensure(f"t{run_id}-{kind}{n:03d}")

    return take


# Every setting that names a key file or directory. ``own_keys`` sets each to None, so a stack
# of its own keeps its keys in <stack_dir>/keys whatever the environment names (the session's
# registrar exports its key paths for the SDK and the CLI).
KEY_SETTINGS = ("broker_key_file", "operator_key_file", "operators_file", "agent_key_dir",
                "trust_anchor", "services_file", "service_key_dir")


def own_keys() -> dict[str, Any]:
    """Settings arguments that keep every key file in the settings' own stack dir."""
    return dict.fromkeys(KEY_SETTINGS)


def api_settings(settings: Settings, agent: str, **changes: Any) -> Settings:
    """The test settings for an API process serving ``agent``'s tests; on Kafka the API is the
    api role's user."""
    return role_settings(settings, topics.API).model_copy(update={
        "enforcement_point": f"api-{agent}", "view_staleness_bound_s": 5.0, **changes,
    })


class Assertions(httpx.Auth):
    """Signs every request with a fresh assertion for its method and path (what a client of
    the HTTP API does with its own key): httpx and Starlette's TestClient take it as ``auth``."""

    def __init__(self, principal: str, key: SigningKey) -> None:
        self.principal = principal
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + self.header_value(
            request.method, request.url.path)
        yield request

    def __call__(self, request: Any) -> Any:
        """The same for a client that takes a function as ``auth``: Starlette's TestClient runs
        on httpx2 when it is installed (the mcp SDK brings it), which knows no ``httpx.Auth``."""
        request.headers["Authorization"] = "Bearer " + self.header_value(
            request.method, request.url.path)
        return request

    def header_value(self, method: str, path: str) -> str:
        """An assertion for one call."""
        return mint(self.key, self.principal, method, path)


def operator_auth(settings: Settings) -> Assertions:
    """The test operator (the key ``ensure_identity_files`` created)."""
    return Assertions(*load_operator(settings.key_path("operator")))


def agent_auth(settings: Settings, agent: str) -> Assertions:
    """An agent, with its current key from the test key store."""
    return Assertions(agent, AgentKeyStore.from_settings(settings).load(agent).current)


def new_service(settings: Settings, name: str) -> Assertions:
    """A resource service with a fresh key, trusted through the services file."""
    key = SigningKey.generate()
    register_service(settings, name, key.jwk)
    return Assertions(f"service:{name}", key)


def new_operator(settings: Settings, name: str) -> Assertions:
    """Another operator with a fresh key, trusted through the operators file."""
    key = SigningKey.generate()
    add_operator(settings.key_path("operators"), f"operator:{name}", key.jwk)
    return Assertions(f"operator:{name}", key)
