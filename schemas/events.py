"""Wire contract: frozen pydantic v2 event models. Imports pydantic and stdlib only.

Every model is frozen. Models an agent sends (untrusted input) forbid extra fields; models the
broker emits also forbid them so consumers can rely on the exact shape. Times are aware UTC.
Additive changes only: a new optional field keeps the minor version, anything else is a new
major version with a new event type name (see ``EVENT_TYPES``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)

# Agent ids appear inside Redis hash tags and Kafka keys: no braces, no spaces, bounded length.
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
# namespace:resource.action, e.g. payments:accounts.freeze; '*' only where a glob is allowed.
SCOPE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,63}(\.[a-z][a-z0-9_-]{0,63})+$"
SCOPE_GLOB_PATTERN = r"^[a-z*][a-z0-9_*-]{0,31}(:[a-z0-9_*.-]{1,160})?$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
# A key id: the RFC 7638 JWK thumbprint (base64url SHA-256, 43 chars) or another opaque,
# URL-safe token; never a path, a URL or anything a lookup could interpret.
KID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
B64URL_PATTERN = r"^[A-Za-z0-9_-]{1,1024}$"

MAX_SCOPES_PER_REQUEST = 32
MAX_RESOURCES_PER_REQUEST = 100
MAX_REQUESTED_DURATION_S = 7 * 24 * 3600  # a week; policies clamp far below this
# A risk signal of this kind revokes every grant of its subject, whatever the policy says.
OPERATOR_REVOKE_KIND = "operator.revoke"


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Scope = Annotated[str, StringConstraints(pattern=SCOPE_PATTERN)]
ScopeGlob = Annotated[str, StringConstraints(pattern=SCOPE_GLOB_PATTERN)]
Resource = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Kid = Annotated[str, StringConstraints(pattern=KID_PATTERN)]
B64Url = Annotated[str, StringConstraints(pattern=B64URL_PATTERN)]
Signals = dict[Annotated[str, StringConstraints(max_length=64)], str | float | int | bool]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")]


class WireModel(BaseModel):
    """Base of every event: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on (the CloudEvents ``id``); every event has one.

        Ids never change: records already on the topics carry them. A model that is only a part
        of events (``ModelInfo``, ``ScopeDenial``, ...) has none.
        """
        raise TypeError(f"no id for {type(self).__name__}")


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


class EscalationRequested(WireModel):
    """An agent asks for elevated scopes, narrowed to resources, for a duration."""

    request_id: EventId
    agent_id: AgentId
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=MAX_SCOPES_PER_REQUEST)]
    resources: Annotated[tuple[Resource, ...], Field(max_length=MAX_RESOURCES_PER_REQUEST)] = ()
    duration_s: Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    case_id: Annotated[str, StringConstraints(max_length=128)] | None = None
    confidence: Unit
    risk_score: Unit = 0.0
    data_sensitivity: Literal["public", "internal", "confidential", "restricted"] = "internal"
    signals: Signals = Field(default_factory=dict)
    model_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


EvidenceKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
EvidenceText = Annotated[str, StringConstraints(max_length=256)]


class RiskObserved(WireModel):
    """A risk signal about an agent and/or a resource."""

    signal_id: EventId
    subject_agent_id: AgentId | None = None
    resource: Resource | None = None
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    severity: Unit
    source: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    detail: Annotated[str, StringConstraints(max_length=2000)] = ""
    observed_at: UtcDatetime
    # Structured evidence (behaviour detectors set it): name -> number or short text, readable
    # by revocation rules as ``signal.evidence.<name>``. Optional: older signals carry none.
    evidence: dict[EvidenceKey, float | EvidenceText] = Field(default_factory=dict,
                                                                max_length=32)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.signal_id


class ScopeDenial(WireModel):
    """One requested scope that was not granted, and the rule (or ceiling) that said no."""

    scope: str
    rule: str
    reason: str


class EscalationDecided(WireModel):
    """The broker's answer to one escalation request."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    outcome: Literal["granted", "denied"]
    granted_scopes: tuple[Scope, ...] = ()
    resources: tuple[Resource, ...] = ()
    denied: tuple[ScopeDenial, ...] = ()
    grant_id: EventId | None = None
    expires_at: UtcDatetime | None = None
    duration_s: int = 0
    clamped_by: str | None = None
    matched_rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime
    # Partition and offsets of the grant's events: ask a view ``allows(..., at_least=token)``.
    consistency_token: str | None = None
    tiers: tuple[str, ...] = ()  # graduated grants: "<rule>/<tier>" of each tier that matched
    approvals: tuple[str, ...] = ()  # approvers whose approval granted it (approval rules)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one decision per request)."""
        return self.request_id


class GrantIssued(WireModel):
    """A time-boxed, narrow grant became active."""

    grant_id: EventId
    agent_id: AgentId
    request_id: EventId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...]
    issued_at: UtcDatetime
    expires_at: UtcDatetime
    policy_revision: str
    rules: tuple[str, ...]
    model_version: str = ""
    model_digest: str = ""
    kid: str = ""  # the agent key that signed the request ("" when unsigned events were allowed)
    # At most this many uses per scope over the grant's life (from the granting rule's budgets).
    budgets: dict[Scope, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)
    case_id: str | None = None  # the case/incident the request named (revocable by it)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one grant per request)."""
        return self.request_id


class GrantRevoked(WireModel):
    """A grant was revoked before its expiry; it never comes back."""

    grant_id: EventId
    agent_id: AgentId
    revoked_at: UtcDatetime
    expires_at: UtcDatetime
    reason: str
    rule: str
    cause_event_id: EventId
    quarantined_until: UtcDatetime | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:revoked"


class AgentRevoked(WireModel):
    """Every grant of an agent was revoked (and it may be quarantined); one per revoking event."""

    agent_id: AgentId
    revoked_at: UtcDatetime
    reason: str
    rule: str
    cause_event_id: EventId
    grant_ids: tuple[EventId, ...] = ()
    quarantined_until: UtcDatetime | None = None
    markers_until: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per revoking event."""
        return f"{self.agent_id}:revoked:{self.cause_event_id}"


class GrantExpired(WireModel):
    """A grant reached its absolute expiry."""

    grant_id: EventId
    agent_id: AgentId
    expires_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:expired"


class GrantReleased(WireModel):
    """The agent gave a grant back early."""

    grant_id: EventId
    agent_id: AgentId
    released_at: UtcDatetime
    reason: str = ""

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return f"{self.grant_id}:released"


class AuditLink(WireModel):
    """Where a sealed audit entry sits in its partition's hash chain.

    ``hash`` is sha256 over the canonical JSON of the whole entry with ``chain.hash`` left out,
    so it covers ``seq`` and ``prev_hash`` too; the first entry of a partition has seq 0 and
    ``prev_hash`` = 64 zeros. ``raw_offset`` is the offset of the entry on the raw audit topic
    (-1 for entries the sealer writes itself, such as digests).
    """

    partition: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=0)]
    prev_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    raw_offset: Annotated[int, Field(ge=-1)]
    sealed_at: UtcDatetime


class AuditRecord(WireModel):
    """What happened, what produced it, and the inputs needed to reproduce it.

    Workers write records without ``chain`` to the raw audit topic; the sealer copies each one
    to the audit topic with ``chain`` set, and every so often appends a record of kind
    ``audit.digest`` whose ``inputs`` hold an Ed25519 signature over the chain so far
    (``first_seq``, ``records``, ``key_id``, ``algorithm``, ``signature``; see
    ``broker.audit.chain``). Sensitive values are stored as ``hmac-sha256:<hex>``.
    """

    audit_id: EventId
    kind: str
    agent_id: AgentId | None
    occurred_at: UtcDatetime
    subject_id: str
    outcome: str
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    policy_revision: str = ""
    inputs: dict[str, object] = Field(default_factory=dict)
    chain: AuditLink | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.audit_id


EnforcementPoint = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class GrantExpiring(WireModel):
    """A grant reaches its absolute expiry soon: renew it (policy permitting) or let it lapse."""

    grant_id: EventId
    agent_id: AgentId
    expires_at: UtcDatetime
    warned_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per expiry it warns of."""
        return f"{self.grant_id}:expiring:{int(self.expires_at.timestamp() * 1000)}"


class RenewalRequested(WireModel):
    """An agent asks to extend one of its own grants, with fresh evidence; policy decides."""

    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    duration_s: Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S)]
    reason: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    confidence: Unit
    risk_score: Unit = 0.0
    signals: Signals = Field(default_factory=dict)
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class RenewalDecided(WireModel):
    """The answer to one renewal: the new absolute expiry, or why not (naming the rule)."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    outcome: Literal["renewed", "denied"]
    expires_at: UtcDatetime | None = None
    previous_expires_at: UtcDatetime | None = None
    total_duration_s: int = 0
    max_total_duration_s: int | None = None
    rule: str | None = None
    reasons: tuple[str, ...] = ()
    matched_rules: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime
    consistency_token: str | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one answer per request)."""
        return self.request_id


class GrantRenewed(WireModel):
    """A live grant got a later absolute expiry through a policy-evaluated renewal."""

    grant_id: EventId
    agent_id: AgentId
    request_id: EventId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...]
    renewed_at: UtcDatetime
    previous_expires_at: UtcDatetime
    expires_at: UtcDatetime
    policy_revision: str
    rules: tuple[str, ...]

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per renewal request."""
        return f"{self.grant_id}:renewed:{self.request_id}"


class ReleaseRequested(WireModel):
    """An agent gives one of its own grants back before it expires."""

    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    requested_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.request_id


class ReleaseDecided(WireModel):
    """The answer to one release request."""

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    grant_id: EventId
    outcome: Literal["released", "denied"]
    reasons: tuple[str, ...] = ()
    decided_at: UtcDatetime
    consistency_token: str | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the request's (one answer per request)."""
        return self.request_id


class RevocationAcknowledged(WireModel):
    """An enforcement point applied a revocation: which one, where it read it, and when."""

    ack_id: EventId
    enforcement_point: EnforcementPoint
    agent_id: AgentId
    cause_event_id: EventId
    grant_ids: tuple[EventId, ...] = ()
    revoked_at: UtcDatetime
    applied_at: UtcDatetime
    topic: str
    partition: int
    offset: int
    # Applied while the view was catching up at its start (not a live propagation time).
    replayed: bool = False

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.ack_id


class EnforcementPointStatus(WireModel):
    """An enforcement point (grant view) says it exists and how current it is."""

    enforcement_point: EnforcementPoint
    topic: str
    ready: bool
    staleness_s: float | None = None
    lag: int = 0
    started_at: UtcDatetime
    reported_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per report."""
        stamp = int(self.reported_at.timestamp() * 1000)
        return f"{self.enforcement_point}:status:{stamp}"


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


AgentStatus = Literal["active", "suspended", "quarantined"]
RegistryChange = Literal[
    "registered", "updated", "suspended", "resumed", "quarantined", "key_rotated", "key_revoked"
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

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per registry revision."""
        return f"{self.agent_id}:rev:{self.revision}"


AgentAction = Literal[
    "register", "update", "suspend", "resume", "rotate_key", "revoke_key", "rotate_broker_key"
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
    """An agent asks for a short-lived token for one of its own grants (to show a service)."""

    command_id: EventId
    agent_id: AgentId  # the acting agent, who signs
    grant_id: EventId
    grant_agent_id: AgentId | None = None  # whose grant (default: the acting agent)
    action: Literal["token"]
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


class GrantUsed(WireModel):
    """A resource service counted (or refused) one use of a budgeted scope of a grant."""

    use_id: EventId  # the service's id of the use: a retried report never counts twice
    agent_id: AgentId
    grant_id: EventId
    scope: Scope
    resource: Annotated[str, StringConstraints(max_length=256)] = ""
    service: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    outcome: Literal["consumed", "refused"]
    used: Annotated[int, Field(ge=0)]  # uses counted so far, this one included when consumed
    limit: Annotated[int, Field(ge=1)]
    used_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per use and outcome."""
        return f"{self.grant_id}:used:{self.use_id}:{self.outcome}"


# An approver: an operator (``operator:<name>``) or a designated verifier agent (its agent id).
Approver = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]


class EscalationPending(WireModel):
    """A request the policy will grant only once enough approvers agree; no grant exists yet.

    ``window_expires_at`` ends the approval window (separate from the grant's lifetime): the
    grant's clock starts at the deciding approval. The final EscalationDecided follows.
    """

    decision_id: EventId
    request_id: EventId
    agent_id: AgentId
    scopes: tuple[Scope, ...]
    resources: tuple[Resource, ...] = ()
    duration_s: int
    quorum: Annotated[int, Field(ge=1)]
    approvers: tuple[Approver, ...]
    window_expires_at: UtcDatetime
    matched_rules: tuple[str, ...] = ()
    tiers: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    policy_revision: str
    decided_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: one per held request."""
        return f"{self.request_id}:pending"


class ApprovalVoted(WireModel):
    """One approver approves or denies a pending request; signed by the approver itself."""

    vote_id: EventId
    request_id: EventId
    agent_id: AgentId  # the requesting agent (the partition key: the request's partition)
    approver: Approver
    verdict: Literal["approve", "deny"]
    reason: Annotated[str, StringConstraints(max_length=2000)] = ""
    voted_at: UtcDatetime

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.vote_id


GrantLifecycle = GrantIssued | GrantRevoked | GrantExpired | GrantReleased | AgentRevoked

# CloudEvents `type` for each model: reverse-DNS, versioned. Spelled here only.
EVENT_TYPES: dict[type[WireModel], str] = {
    AgentProfile: "io.permbroker.agent.registered.v1",
    EscalationRequested: "io.permbroker.escalation.requested.v1",
    RiskObserved: "io.permbroker.risk.observed.v1",
    EscalationDecided: "io.permbroker.escalation.decided.v1",
    GrantIssued: "io.permbroker.grant.issued.v1",
    GrantRevoked: "io.permbroker.grant.revoked.v1",
    GrantExpired: "io.permbroker.grant.expired.v1",
    GrantReleased: "io.permbroker.grant.released.v1",
    AgentRevoked: "io.permbroker.agent.revoked.v1",
    AuditRecord: "io.permbroker.audit.recorded.v1",
    GrantExpiring: "io.permbroker.grant.expiring.v1",
    GrantRenewed: "io.permbroker.grant.renewed.v1",
    RenewalRequested: "io.permbroker.grant.renewal.requested.v1",
    RenewalDecided: "io.permbroker.grant.renewal.decided.v1",
    ReleaseRequested: "io.permbroker.grant.release.requested.v1",
    ReleaseDecided: "io.permbroker.grant.release.decided.v1",
    RevocationAcknowledged: "io.permbroker.revocation.acknowledged.v1",
    EscalationPending: "io.permbroker.escalation.pending.v1",
    ApprovalVoted: "io.permbroker.approval.voted.v1",
    EnforcementPointStatus: "io.permbroker.enforcement.status.v1",
    AgentRecord: "io.permbroker.agent.record.v1",
    AgentCommand: "io.permbroker.agent.command.v1",
    GrantCommand: "io.permbroker.grant.command.v1",
    CommandAnswered: "io.permbroker.command.answered.v1",
    JwksPublished: "io.permbroker.jwks.published.v1",
    GrantUsed: "io.permbroker.grant.used.v1",
}
MODELS_BY_TYPE: dict[str, type[WireModel]] = {v: k for k, v in EVENT_TYPES.items()}

_TYPE_RE = re.compile(r"^(?P<base>io\.permbroker\.[a-z.]+)\.v(?P<major>\d+)(\.(?P<minor>\d+))?$")


def model_for_type(ce_type: str) -> type[WireModel] | None:
    """The model for a CloudEvents type; minor versions (``.v1.3``) map to their major."""
    match = _TYPE_RE.match(ce_type)
    if match is None:
        return None
    return MODELS_BY_TYPE.get(f"{match['base']}.v{match['major']}")


def type_version(ce_type: str) -> tuple[int, int] | None:
    """(major, minor) of a versioned CloudEvents type; ``...v1`` is minor 0. None if unversioned."""
    match = _TYPE_RE.match(ce_type)
    if match is None:
        return None
    return int(match["major"]), int(match["minor"] or 0)


# Minor version of each model this code knows; fields a newer minor adds are ignored on read.
KNOWN_MINOR = 0


def partition_key(event: WireModel) -> str | None:
    """The Kafka message key: always the agent id (one agent, one partition, in order)."""
    if isinstance(event, RiskObserved):
        return event.subject_agent_id or event.resource
    if isinstance(event, EnforcementPointStatus):
        return event.enforcement_point
    if isinstance(event, JwksPublished):
        return event.issuer  # a compacted topic: the latest key set per issuer
    value = getattr(event, "agent_id", None)
    return value if isinstance(value, str) else None
