"""Agents and keys: profiles, registry records, registry and grant commands, answers, JWKS.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import (
    AGENT_ID_PATTERN,
    MAX_REQUESTED_DURATION_S,
    AgentId,
    B64Url,
    EventId,
    Kid,
    LabelKey,
    LabelValue,
    Scope,
    ScopeGlob,
    Signals,
    Unit,
    UtcDatetime,
    WireModel,
)


class ModelInfo(WireModel):
    """The AI model behind an agent."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    version: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    digest: Annotated[str, StringConstraints(max_length=128)] = ""


class AgentProfile(WireModel):
    """Identity and AI attributes of one agent; baseline and ceiling come from its class."""

    agent_id: AgentId
    agent_class: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
    owner: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    tenant: Annotated[str, StringConstraints(max_length=64)] = "default"
    model: ModelInfo
    training_data_ref: Annotated[str, StringConstraints(max_length=256)] = ""
    confidence_threshold: Unit = 0.9
    operational_params: Signals = Field(default_factory=dict)
    baseline: tuple[Scope, ...] = ()
    ceiling: tuple[ScopeGlob, ...] = ()
    # Operator labels (team=fraud, env=prod): selectors revoke by them.
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: its agent's."""
        return f"{self.agent_id}:profile"


class PublicJwk(WireModel):
    """A public key as a JWK (RFC 7517): Ed25519 or X25519 (kty OKP), or P-256 (kty EC)."""

    kty: Literal["OKP", "EC"]
    crv: Literal["Ed25519", "X25519", "P-256"]
    x: B64Url
    y: B64Url | None = None
    kid: Kid | None = None
    alg: Literal["EdDSA", "ES256", "ECDH-ES"] | None = None
    use: Literal["sig", "enc"] | None = None


class AgentKey(WireModel):
    """One public key of an agent in the registry, and from when until when it may sign."""

    kid: Kid
    jwk: PublicJwk
    status: Literal["active", "retiring", "revoked"] = "active"
    added_at: UtcDatetime
    not_after: UtcDatetime | None = None  # a retiring key signs events appended before this
    revoked_at: UtcDatetime | None = None


AgentStatus = Literal["active", "suspended", "quarantined", "decommissioned"]
RegistryChange = Literal[
    "registered", "updated", "suspended", "resumed", "quarantined", "key_rotated", "key_revoked",
    "decommissioned", "reinstated", "renewed",
]


class AgentRecord(WireModel):
    """The registry's record of one agent; the compacted agents topic keeps the latest per agent."""

    agent_id: AgentId
    profile: AgentProfile
    status: AgentStatus = "active"
    keys: tuple[AgentKey, ...] = ()
    revision: Annotated[int, Field(ge=1)]
    change: RegistryChange
    reason: str = ""
    changed_at: UtcDatetime
    changed_by: str
    cause_id: EventId
    cause_offset: int = -1  # offset of that command in its registry partition (idempotency)
    registered_at: UtcDatetime
    enrollment_id: str | None = None  # the enrollment token (jti) the agent registered with
    # When an operator last renewed the registration (None: never; it counts from registered_at).
    renewed_at: UtcDatetime | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per registry revision."""
        return f"{self.agent_id}:rev:{self.revision}"


AgentAction = Literal[
    "register", "update", "suspend", "resume", "rotate_key", "revoke_key", "rotate_broker_key",
    "decommission", "reinstate", "renew",
]


class AgentCommand(WireModel):
    """A signed change to the registry: by an operator, or by an agent for its own key."""

    command_id: EventId
    action: AgentAction
    agent_id: AgentId | None = None  # None only for rotate_broker_key
    profile: AgentProfile | None = None  # register / update (baseline, ceiling: from the class)
    key: PublicJwk | None = None  # register / rotate_key: the new public key
    kid: Kid | None = None  # revoke_key: the key to revoke
    enrollment: Annotated[str, StringConstraints(max_length=8192)] | None = None
    overlap_s: Annotated[int, Field(ge=0, le=MAX_REQUESTED_DURATION_S)] | None = None
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    issued_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.command_id


class GrantCommand(WireModel):
    """A command about one grant: an agent asks for a short-lived token for one of its own
    grants (``token``, signed by the agent), or an operator revokes one grant (``revoke``,
    signed by the operator; ``agent_id`` is then the grant's agent)."""

    command_id: EventId
    agent_id: AgentId  # token: the acting agent, who signs; revoke: the grant's agent
    grant_id: EventId
    grant_agent_id: AgentId | None = None  # whose grant (default: the acting agent)
    action: Literal["token", "revoke"]
    audience: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] | None = None
    reply_key: PublicJwk | None = None  # token: the X25519 key the token is encrypted to
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    issued_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.command_id


class CommandAnswered(WireModel):
    """The broker's answer to one registry or grant command (done, or refused with the reason)."""

    answer_id: EventId
    command_id: EventId
    agent_id: AgentId | None
    action: str
    outcome: Literal["done", "refused"]
    reason: str = ""
    rule: str = ""
    grant_id: EventId | None = None
    token: str | None = None  # JWE (ECDH-ES, A256GCM) to the command's reply key
    token_expires_at: UtcDatetime | None = None
    record_revision: int | None = None
    # Where the command's effects on the grant topics landed (a view's ``at_least``).
    consistency_token: Annotated[str, StringConstraints(max_length=4096)] | None = None
    answered_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the answer's own (not the command's)."""
        return self.answer_id


class JwksPublished(WireModel):
    """The broker's public token-signing keys (a JWKS); each message replaces the previous set."""

    issuer: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    keys: tuple[PublicJwk, ...]
    revision: str
    published_at: UtcDatetime

    def document(self) -> dict[str, object]:
        """The RFC 7517 JWK Set: ``{"keys": [...]}``, ready to serve as jwks.json."""
        return {"keys": [k.model_dump(mode="json", exclude_none=True) for k in self.keys]}

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per key-set revision."""
        return f"jwks:{self.issuer}:{self.revision}"
