"""Event ids (the CloudEvents ``id`` consumers dedupe on), pinned byte for byte for every model."""

from __future__ import annotations

import pytest

from schemas.events import (
    EVENT_TYPES,
    AgentCommand,
    AgentKey,
    AgentProfile,
    AgentRecord,
    AgentRevoked,
    ApprovalVoted,
    AuditLink,
    AuditRecord,
    AuditWithheld,
    BaselineEntitlement,
    ChecksReported,
    CommandAnswered,
    DelegationDecided,
    DelegationRequested,
    EnforcementPointStatus,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    GrantCommand,
    GrantExpired,
    GrantExpiring,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
    GrantUsed,
    JwksPublished,
    KeyAgeWarning,
    ModelInfo,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RevocationAcknowledged,
    RiskObserved,
    RoutingAnnounced,
    ScopeDenial,
    WireModel,
)
from tests.support.wire import JWK, KID, NOW, SAMPLES

# The id of each sample in tests/support/wire.py. Ids are part of the wire contract: records
# already on the topics carry them, and consumers dedupe on them, so they never change.
PINNED: dict[type[WireModel], str] = {
    AgentProfile: "fraud-detector-7:profile",
    EscalationRequested: "req-1",
    RiskObserved: "sig-1",
    EscalationDecided: "req-1",  # the request's id, not the decision's
    GrantIssued: "req-1",  # the request's id, not the grant's
    GrantRevoked: "grant-1:revoked",
    GrantExpired: "grant-1:expired",
    GrantReleased: "grant-1:released",
    AgentRevoked: "fraud-detector-7:revoked:sig-1",
    AuditRecord: "audit-1",
    AuditWithheld: "withheld:2:7",  # its place in the chain
    GrantExpiring: "grant-1:expiring:1795860020000",
    RenewalRequested: "req-2",
    RenewalDecided: "req-2",
    GrantRenewed: "grant-1:renewed:req-2",
    ReleaseRequested: "req-3",
    ReleaseDecided: "req-3",
    RevocationAcknowledged: "ack-1",
    EnforcementPointStatus: "payments-api:status:1795860020000",
    AgentRecord: "fraud-detector-7:rev:1",
    AgentCommand: "cmd-2",
    GrantCommand: "cmd-3",
    CommandAnswered: "answer-1",  # the answer's id, not the command's
    GrantUsed: "g-1:used:use-1:consumed",
    ChecksReported: "checks-1",
    JwksPublished: "jwks:permbroker:sha256:12",
    EscalationPending: "req-9:pending",
    ApprovalVoted: "vote-1",
    RoutingAnnounced: "routing:host-1:4242:2026-11-28T10:00:00+00:00",
    BaselineEntitlement: "baseline-1",
    KeyAgeWarning: "key-warning-1",
    DelegationRequested: "req-4",
    DelegationDecided: "delegation-1",  # the decision's id
}


def test_every_event_model_has_a_pinned_id() -> None:
    """A new event model gets its id pinned here too."""
    assert set(PINNED) == set(EVENT_TYPES)


@pytest.mark.parametrize("model", list(EVENT_TYPES), ids=lambda m: m.__name__)
def test_event_id_is_pinned(model: type[WireModel]) -> None:
    """Each model's id is exactly the one consumers have always deduped on."""
    assert SAMPLES[model].event_id == PINNED[model]


def test_a_refused_use_has_another_id_than_the_consumed_one() -> None:
    """A service reporting the same use twice, consumed then refused, emits two distinct events."""
    consumed = SAMPLES[GrantUsed]
    refused = consumed.model_copy(update={"outcome": "refused"})
    assert refused.event_id == "g-1:used:use-1:refused" != consumed.event_id


PARTS = (
    ModelInfo(name="m", version="1"),
    ScopeDenial(scope="a:b.c", rule="r", reason="no"),
    AuditLink(partition=0, seq=0, prev_hash="0" * 64, hash="0" * 64, raw_offset=-1,
              sealed_at=NOW),
    JWK,
    AgentKey(kid=KID, jwk=JWK, added_at=NOW),
)


@pytest.mark.parametrize("part", PARTS, ids=lambda p: type(p).__name__)
def test_a_model_that_is_no_event_has_no_id(part: WireModel) -> None:
    """Parts of events (never published alone) have no id: asking for one is a TypeError."""
    with pytest.raises(TypeError, match=f"no id for {type(part).__name__}"):
        _ = part.event_id
