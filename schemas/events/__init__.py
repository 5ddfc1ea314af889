"""Wire contract: frozen pydantic v2 event models. Imports pydantic and stdlib only.

One module per capability (identity, escalations, risk, grants, lifecycle, audit, delivery), the
shared vocabulary in ``base`` and the CloudEvents types in ``catalog``; every public name is
re-exported here, so ``from schemas.events import X`` is the way to import one.

Every model is frozen. Models an agent sends (untrusted input) forbid extra fields; models the
broker emits also forbid them so consumers can rely on the exact shape. Times are aware UTC.
Additive changes only: a new optional field keeps the minor version, anything else is a new
major version with a new event type name (see ``EVENT_TYPES``).
"""

from __future__ import annotations

from schemas.events.audit import AuditLink, AuditRecord, AuditWithheld, WithheldLink
from schemas.events.base import (
    AGENT_ID_PATTERN,
    B64URL_PATTERN,
    ID_PATTERN,
    KID_PATTERN,
    MAX_REQUESTED_DURATION_S,
    MAX_RESOURCES_PER_REQUEST,
    MAX_SCOPES_PER_REQUEST,
    SCOPE_GLOB_PATTERN,
    SCOPE_PATTERN,
    AgentId,
    B64Url,
    EventId,
    Kid,
    LabelKey,
    LabelValue,
    Resource,
    Scope,
    ScopeGlob,
    Signals,
    Unit,
    UtcDatetime,
    WireModel,
)
from schemas.events.baseline import BaselineEntitlement, KeyAgeWarning
from schemas.events.catalog import (
    EVENT_TYPES,
    KNOWN_MINOR,
    MODELS_BY_TYPE,
    model_for_type,
    partition_key,
    type_version,
)
from schemas.events.delegation import DelegationDecided, DelegationRequested
from schemas.events.delivery import EnforcementPoint, EnforcementPointStatus, RevocationAcknowledged
from schemas.events.escalations import (
    ApprovalVoted,
    Approver,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    ScopeDenial,
)
from schemas.events.grants import (
    AgentRevoked,
    GrantExpired,
    GrantExpiring,
    GrantIssued,
    GrantLifecycle,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
    GrantUsed,
    RoutingAnnounced,
)
from schemas.events.identity import (
    AgentAction,
    AgentCommand,
    AgentKey,
    AgentProfile,
    AgentRecord,
    AgentStatus,
    CommandAnswered,
    GrantCommand,
    JwksPublished,
    ModelInfo,
    PublicJwk,
    RegistryChange,
)
from schemas.events.lifecycle import (
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
)
from schemas.events.risk import OPERATOR_REVOKE_KIND, EvidenceKey, EvidenceText, RiskObserved
from schemas.events.usage import CheckPerformed, ChecksReported

__all__ = [
    "AGENT_ID_PATTERN",
    "B64URL_PATTERN",
    "EVENT_TYPES",
    "ID_PATTERN",
    "KID_PATTERN",
    "KNOWN_MINOR",
    "MAX_REQUESTED_DURATION_S",
    "MAX_RESOURCES_PER_REQUEST",
    "MAX_SCOPES_PER_REQUEST",
    "MODELS_BY_TYPE",
    "OPERATOR_REVOKE_KIND",
    "SCOPE_GLOB_PATTERN",
    "SCOPE_PATTERN",
    "AgentAction",
    "AgentCommand",
    "AgentId",
    "AgentKey",
    "AgentProfile",
    "AgentRecord",
    "AgentRevoked",
    "AgentStatus",
    "ApprovalVoted",
    "Approver",
    "AuditLink",
    "AuditRecord",
    "AuditWithheld",
    "B64Url",
    "BaselineEntitlement",
    "CheckPerformed",
    "ChecksReported",
    "CommandAnswered",
    "DelegationDecided",
    "DelegationRequested",
    "EnforcementPoint",
    "EnforcementPointStatus",
    "EscalationDecided",
    "EscalationPending",
    "EscalationRequested",
    "EventId",
    "EvidenceKey",
    "EvidenceText",
    "GrantCommand",
    "GrantExpired",
    "GrantExpiring",
    "GrantIssued",
    "GrantLifecycle",
    "GrantReleased",
    "GrantRenewed",
    "GrantRevoked",
    "GrantUsed",
    "JwksPublished",
    "KeyAgeWarning",
    "Kid",
    "LabelKey",
    "LabelValue",
    "ModelInfo",
    "PublicJwk",
    "RegistryChange",
    "ReleaseDecided",
    "ReleaseRequested",
    "RenewalDecided",
    "RenewalRequested",
    "Resource",
    "RevocationAcknowledged",
    "RiskObserved",
    "RoutingAnnounced",
    "Scope",
    "ScopeDenial",
    "ScopeGlob",
    "Signals",
    "Unit",
    "UtcDatetime",
    "WireModel",
    "WithheldLink",
    "model_for_type",
    "partition_key",
    "type_version",
]
