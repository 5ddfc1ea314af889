"""The CloudEvents type of each event model (versioned), and each event's partition key.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

import re

from schemas.events.audit import AuditRecord, AuditWithheld
from schemas.events.base import WireModel
from schemas.events.baseline import BaselineEntitlement, KeyAgeWarning
from schemas.events.delegation import DelegationDecided, DelegationRequested
from schemas.events.delivery import EnforcementPointStatus, RevocationAcknowledged
from schemas.events.escalations import (
    ApprovalVoted,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
)
from schemas.events.grants import (
    AgentRevoked,
    GrantExpired,
    GrantExpiring,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
    GrantUsed,
    RoutingAnnounced,
)
from schemas.events.identity import (
    AgentCommand,
    AgentProfile,
    AgentRecord,
    CommandAnswered,
    GrantCommand,
    JwksPublished,
)
from schemas.events.lifecycle import (
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
)
from schemas.events.risk import RiskObserved
from schemas.events.usage import ChecksReported

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
    AuditWithheld: "io.permbroker.audit.withheld.v1",
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
    ChecksReported: "io.permbroker.checks.reported.v1",
    RoutingAnnounced: "io.permbroker.grant.routing.v1",
    BaselineEntitlement: "io.permbroker.agent.baseline.v1",
    KeyAgeWarning: "io.permbroker.agent.key.warning.v1",
    DelegationRequested: "io.permbroker.grant.delegation.requested.v1",
    DelegationDecided: "io.permbroker.grant.delegation.decided.v1",
}
MODELS_BY_TYPE: dict[str, type[WireModel]] = {v: k for k, v in EVENT_TYPES.items()}

_TYPE_RE = re.compile(r"(?P<base>io\.permbroker\.[a-z.]+)\.v(?P<major>\d+)(\.(?P<minor>\d+))?")


def model_for_type(ce_type: str) -> type[WireModel] | None:
    """The model for a CloudEvents type; minor versions (``.v1.3``) map to their major."""
    match = _TYPE_RE.fullmatch(ce_type)
    if match is None:
        return None
    return MODELS_BY_TYPE.get(f"{match['base']}.v{match['major']}")


def type_version(ce_type: str) -> tuple[int, int] | None:
    """(major, minor) of a versioned CloudEvents type; ``...v1`` is minor 0. None if unversioned."""
    match = _TYPE_RE.fullmatch(ce_type)
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
