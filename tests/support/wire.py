"""Wire-contract samples: one event of every model, and hand-built CloudEvents messages.

Imports broker (the codec), schemas.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.adapters.kafka import codec
from schemas.events import (
    EVENT_TYPES,
    AgentCommand,
    AgentKey,
    AgentProfile,
    AgentRecord,
    AgentRevoked,
    ApprovalVoted,
    AuditRecord,
    AuditWithheld,
    BaselineEntitlement,
    CheckPerformed,
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
    PublicJwk,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RevocationAcknowledged,
    RiskObserved,
    RoutingAnnounced,
    ScopeDenial,
    WireModel,
    WithheldLink,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=20)
AGENT = "fraud-detector-7"
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
SOURCE = "/permbroker/tests"
REQUESTED = EVENT_TYPES[EscalationRequested]
KID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
JWK = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")

SAMPLES: dict[type[WireModel], WireModel] = {
    AgentProfile: AgentProfile(
        agent_id=AGENT,
        agent_class="fraud-detection",
        owner="fraud-ops@example.com",
        model=ModelInfo(name="fraud-gbm", version="3.2"),
        baseline=("payments:transactions.read",),
        ceiling=("payments:accounts.*",),
        operational_params={"window": 30},
    ),
    EscalationRequested: EscalationRequested(
        request_id="req-1",
        agent_id=AGENT,
        scopes=(FREEZE, PII),
        resources=("acct-1",),
        duration_s=900,
        reason="card-testing pattern",
        confidence=0.95,
        risk_score=0.85,
        signals={"pattern": "card-testing", "hits": 12},
        requested_at=NOW,
    ),
    RiskObserved: RiskObserved(
        signal_id="sig-1",
        subject_agent_id=AGENT,
        kind="behaviour_anomaly",
        severity=0.9,
        source="anomaly-detector",
        observed_at=NOW,
    ),
    EscalationDecided: EscalationDecided(
        decision_id="decision-1",
        request_id="req-1",
        agent_id=AGENT,
        outcome="granted",
        granted_scopes=(FREEZE,),
        resources=("acct-1",),
        grant_id="grant-1",
        expires_at=LATER,
        denied=(ScopeDenial(scope=PII, rule="no-pii-for-risky-agent", reason="risky"),),
        duration_s=20,
        matched_rules=("fraud-freeze-on-pattern",),
        policy_revision="sha256:ab",
        decided_at=NOW,
    ),
    GrantIssued: GrantIssued(
        grant_id="grant-1",
        agent_id=AGENT,
        request_id="req-1",
        scopes=(FREEZE,),
        resources=("acct-1",),
        issued_at=NOW,
        expires_at=LATER,
        policy_revision="sha256:ab",
        rules=("fraud-freeze-on-pattern",),
        model_version="3.2",
    ),
    GrantRevoked: GrantRevoked(
        grant_id="grant-1",
        agent_id=AGENT,
        revoked_at=NOW,
        expires_at=LATER,
        reason="anomaly",
        rule="revoke-on-behaviour-anomaly",
        cause_event_id="sig-1",
        quarantined_until=LATER,
    ),
    GrantExpired: GrantExpired(grant_id="grant-1", agent_id=AGENT, expires_at=LATER),
    GrantReleased: GrantReleased(grant_id="grant-1", agent_id=AGENT, released_at=NOW),
    AgentRevoked: AgentRevoked(
        agent_id=AGENT,
        revoked_at=NOW,
        reason="anomaly",
        rule="revoke-on-behaviour-anomaly",
        cause_event_id="sig-1",
        grant_ids=("grant-1",),
        markers_until=LATER,
    ),
    AuditRecord: AuditRecord(
        audit_id="audit-1",
        kind="escalation.decided",
        agent_id=AGENT,
        occurred_at=NOW,
        subject_id="req-1",
        outcome="granted",
        inputs={"request": {"request_id": "req-1"}},
    ),
    AuditWithheld: AuditWithheld(chain=WithheldLink(
        partition=2, seq=7, prev_hash="0" * 64, hash="a" * 64)),
    GrantExpiring: GrantExpiring(grant_id="grant-1", agent_id=AGENT, expires_at=LATER,
                                 warned_at=NOW),
    RenewalRequested: RenewalRequested(
        request_id="req-2", agent_id=AGENT, grant_id="grant-1", duration_s=20,
        reason="still investigating", confidence=0.95, risk_score=0.9, requested_at=NOW),
    RenewalDecided: RenewalDecided(
        decision_id="decision-2", request_id="req-2", agent_id=AGENT, grant_id="grant-1",
        outcome="renewed", expires_at=LATER, previous_expires_at=NOW, total_duration_s=40,
        max_total_duration_s=60, policy_revision="sha256:ab", decided_at=NOW,
        consistency_token="ct1:permbroker.grants@3:17"),
    GrantRenewed: GrantRenewed(
        grant_id="grant-1", agent_id=AGENT, request_id="req-2", scopes=(FREEZE,),
        resources=("acct-1",), renewed_at=NOW, previous_expires_at=NOW, expires_at=LATER,
        policy_revision="sha256:ab", rules=("fraud-freeze-on-pattern",)),
    ReleaseRequested: ReleaseRequested(
        request_id="req-3", agent_id=AGENT, grant_id="grant-1", reason="done", requested_at=NOW),
    ReleaseDecided: ReleaseDecided(
        decision_id="decision-3", request_id="req-3", agent_id=AGENT, grant_id="grant-1",
        outcome="released", decided_at=NOW),
    RevocationAcknowledged: RevocationAcknowledged(
        ack_id="ack-1", enforcement_point="payments-api", agent_id=AGENT, cause_event_id="sig-1",
        grant_ids=("grant-1",), revoked_at=NOW, applied_at=LATER, topic="permbroker.grants",
        partition=3, offset=17),
    EnforcementPointStatus: EnforcementPointStatus(
        enforcement_point="payments-api", topic="permbroker.grants.payments", ready=True,
        staleness_s=0.2, lag=0, started_at=NOW, reported_at=LATER),
    AgentRecord: AgentRecord(
        agent_id=AGENT,
        profile=AgentProfile(
            agent_id=AGENT,
            agent_class="fraud-detection",
            owner="fraud-ops@example.com",
            model=ModelInfo(name="fraud-gbm", version="3.2", digest="sha256:4f"),
        ),
        keys=(AgentKey(kid=KID, jwk=JWK, added_at=NOW),),
        revision=1,
        change="registered",
        changed_at=NOW,
        changed_by="operator:alice",
        cause_id="cmd-1",
        cause_offset=7,
        registered_at=NOW,
    ),
    AgentCommand: AgentCommand(
        command_id="cmd-2",
        action="rotate_key",
        agent_id=AGENT,
        key=JWK,
        overlap_s=300,
        issued_at=NOW,
    ),
    GrantCommand: GrantCommand(
        command_id="cmd-3",
        agent_id=AGENT,
        grant_id="grant-1",
        action="token",
        audience="payments",
        reply_key=PublicJwk(kty="OKP", crv="X25519", x="AAAA"),
        issued_at=NOW,
    ),
    RoutingAnnounced: RoutingAnnounced(
        worker="host-1:4242", namespaces=("crm", "payments"), announced_at=NOW,
    ),
    BaselineEntitlement: BaselineEntitlement(
        entitlement_id="baseline-1", agent_id=AGENT, status="active",
        scopes=("payments:transactions.read",), agent_class="fraud-detector",
        registry_revision=2, policy_revision="sha256:abc", reason="baseline of class "
        "fraud-detector (registry revision 2)", cause_id="cmd-1", effective_at=NOW,
    ),
    KeyAgeWarning: KeyAgeWarning(
        warning_id="key-warning-1", agent_id=AGENT, kid="kid-0000000001", added_at=NOW,
        refused_at=LATER, warned_at=NOW, reason="rotate before the maximum key age",
    ),
    CommandAnswered: CommandAnswered(
        answer_id="answer-1",
        command_id="cmd-3",
        agent_id=AGENT,
        action="token",
        outcome="refused",
        reason="grant-1 is not an active grant of fraud-detector-7",
        rule="identity:not-your-grant",
        grant_id="grant-1",
        answered_at=NOW,
    ),
    GrantUsed: GrantUsed(
        use_id="use-1", agent_id=AGENT, grant_id="g-1", scope="payments:accounts.freeze",
        resource="acct-1", service="payments-api", outcome="consumed", used=1, limit=3,
        used_at=NOW,
    ),
    ChecksReported: ChecksReported(
        report_id="checks-1", agent_id=AGENT, service="payments-mcp", dropped=2,
        checks=(CheckPerformed(scope="payments:accounts.freeze", resource="acct-1", allowed=True,
                               grant_id="g-1", reason="grant g-1", checked_at=NOW),),
        reported_at=NOW,
    ),
    JwksPublished: JwksPublished(
        issuer="permbroker",
        keys=(JWK.model_copy(update={"kid": KID, "alg": "EdDSA"}),),
        revision="sha256:12",
        published_at=NOW,
    ),
    EscalationPending: EscalationPending(
        decision_id="decision-9", request_id="req-9", agent_id=AGENT,
        scopes=("payments:accounts.freeze",), resources=("acct-1",), duration_s=300, quorum=2,
        approvers=("operator:oncall", "verifier-1", "verifier-2"),
        window_expires_at=NOW + timedelta(minutes=10), matched_rules=("fraud-graduated",),
        tiers=("fraud-graduated/unsure",), policy_revision="sha256:12", decided_at=NOW,
    ),
    ApprovalVoted: ApprovalVoted(
        vote_id="vote-1", request_id="req-9", agent_id=AGENT, approver="verifier-1",
        verdict="approve", reason="pattern confirmed", voted_at=NOW,
    ),
    DelegationRequested: DelegationRequested(
        request_id="req-4", agent_id=AGENT, parent_grant_id="grant-1", delegate_id="ops-bot-1",
        scopes=(FREEZE,), resources=("acct-1",), duration_s=60, reason="hand over the freeze",
        requested_at=NOW),
    DelegationDecided: DelegationDecided(
        decision_id="delegation-1", request_id="req-4", agent_id=AGENT, delegate_id="ops-bot-1",
        parent_grant_id="grant-1", outcome="granted", grant_id="grant-2", granted_scopes=(FREEZE,),
        resources=("acct-1",), expires_at=LATER, policy_revision="sha256:ab", decided_at=NOW,
        consistency_token="ct1:permbroker.grants@3:18"),
}



def headers_of(encoded: codec.Encoded) -> dict[str, str]:
    return {name: value.decode() for name, value in encoded.headers}


def request_json(**changes: Any) -> dict[str, Any]:
    return SAMPLES[EscalationRequested].model_dump(mode="json") | changes


def message(
    value: bytes, *, ce_type: str = REQUESTED, key: bytes | None = AGENT.encode(), drop: str = ""
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", ce_type.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_id", b"req-1"),
        ("ce_time", NOW.isoformat().encode()),
        ("ce_subject", AGENT.encode()),
        ("content-type", b"application/json"),
    ]
    return key, value, [(name, raw) for name, raw in headers if name != drop]


VALID = json.dumps(request_json()).encode()
