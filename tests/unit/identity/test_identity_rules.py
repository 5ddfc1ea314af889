"""Identity rules (pure): signature binding, freshness, key validity, who may act for whom."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.identity.rules import (
    EventClaims,
    MessageFacts,
    Principal,
    Reason,
    agent_usable,
    authorize_event,
    check_binding,
    grant_owner_problem,
    is_agent_request,
    key_usable,
    thumbprint,
    value_digest,
)
from schemas.events import (
    OPERATOR_REVOKE_KIND,
    AgentKey,
    AgentProfile,
    AgentRecord,
    EscalationRequested,
    GrantCommand,
    ModelInfo,
    PublicJwk,
    RiskObserved,
)

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
RFC8037_JWK = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
A, B = "agent-a", "agent-b"
ALICE = Principal("operator:alice", "operator", "kid-operator-1")


def facts(**changes: object) -> MessageFacts:
    base = {"ce_id": "req-1", "ce_type": "io.permbroker.escalation.requested.v1", "key": A,
            "digest": value_digest(b"{}"), "received_at": NOW}
    return MessageFacts(**(base | changes))  # type: ignore[arg-type]


def claims(**changes: object) -> EventClaims:
    base = {"iss": A, "aud": "permbroker", "iat": int(NOW.timestamp()), "jti": "n-1",
            "ce_id": "req-1", "ce_type": "io.permbroker.escalation.requested.v1", "key": A,
            "digest": value_digest(b"{}")}
    return EventClaims(**(base | changes))  # type: ignore[arg-type]


def request(agent: str = A) -> EscalationRequested:
    return EscalationRequested(request_id="req-1", agent_id=agent, scopes=("a:b.c",),
                               duration_s=60, reason="r", confidence=0.9, requested_at=NOW)


def test_thumbprint_matches_the_rfc_8037_example() -> None:
    """The kid is the RFC 7638 thumbprint: RFC 8037 A.3 gives this one for its Ed25519 key."""
    assert thumbprint(RFC8037_JWK) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_binding_accepts_the_message_it_was_made_for() -> None:
    """Claims naming this id, type, key and bytes, signed now, bind the message."""
    assert check_binding(claims(), facts(), max_age_s=300, skew_s=30) is None


@pytest.mark.parametrize("field, value", [("ce_id", "req-2"), ("ce_type", "io.x.v1"),
                                          ("key", B), ("digest", value_digest(b"{ }"))])
def test_binding_refuses_a_signature_made_for_another_message(field: str, value: str) -> None:
    """Changing any bound field (id, type, key, one byte of the value) is tampering."""
    why = check_binding(claims(), facts(**{field: value}), max_age_s=300, skew_s=30)
    assert why is not None and why.code is Reason.TAMPERED


def test_binding_refuses_another_audience() -> None:
    """A signature meant for another audience is not one for the broker."""
    why = check_binding(claims(aud="elsewhere"), facts(), max_age_s=300, skew_s=30)
    assert why is not None and why.code is Reason.TAMPERED


@pytest.mark.parametrize("offset, ok", [(-300, True), (-301, False), (30, True), (31, False)])
def test_iat_window_is_judged_at_kafka_append_time(offset: int, ok: bool) -> None:
    """iat may be up to max_age before the append time and skew after it, not one second more."""
    why = check_binding(claims(iat=int(NOW.timestamp()) + offset), facts(), max_age_s=300,
                        skew_s=30)
    assert (why is None) is ok
    assert ok or (why is not None and why.code is Reason.STALE)


def test_retiring_key_signs_until_not_after_and_a_revoked_key_never() -> None:
    """Retiring keys are valid before not_after; revoked and not-yet-added keys are not."""
    key = AgentKey(kid="kid-00000001", jwk=RFC8037_JWK, added_at=NOW - timedelta(hours=1),
                   status="retiring", not_after=NOW)
    assert key_usable(key, NOW - timedelta(seconds=1)) is None
    retired = key_usable(key, NOW)
    assert retired is not None and retired.code is Reason.KEY_RETIRED
    early = key_usable(key, NOW - timedelta(hours=2))
    assert early is not None and early.code is Reason.KEY_RETIRED
    revoked = key_usable(key.model_copy(update={"status": "revoked", "not_after": None}), NOW)
    assert revoked is not None and revoked.code is Reason.KEY_REVOKED


@pytest.mark.parametrize("status, code", [("suspended", Reason.SUSPENDED),
                                          ("quarantined", Reason.QUARANTINED)])
def test_suspended_or_quarantined_agent_may_not_act(status: str, code: Reason) -> None:
    """Only an active agent acts."""
    profile = AgentProfile(agent_id=A, agent_class="c", owner="o",
                           model=ModelInfo(name="m", version="1"))
    record = AgentRecord(agent_id=A, profile=profile, status=status, revision=2,  # type: ignore[arg-type]
                         change="suspended", changed_at=NOW, changed_by="operator:alice",
                         cause_id="c-1", registered_at=NOW)
    why = agent_usable(record)
    assert why is not None and why.code is code
    assert agent_usable(record.model_copy(update={"status": "active"})) is None


def test_an_agent_escalates_only_for_itself() -> None:
    """B's key on A's request is another agent's key; an operator's or a service's key may
    neither ask for A's grants nor take a grant token in A's name (the HTTP API relays A's own
    assertion, judged as A)."""
    assert authorize_event(Principal(A, "agent", "k"), request()) is None
    foreign = authorize_event(Principal(B, "agent", "kb"), request())
    assert foreign is not None and foreign.code is Reason.FOREIGN_KEY
    token = GrantCommand(command_id="c-1", agent_id=A, grant_id="g-1", action="token",
                         issued_at=NOW)
    service = Principal("service:permbroker-api", "service", "kid-service-1")
    for signer in (ALICE, service):
        for event in (request(), token):
            refused = authorize_event(signer, event)
            assert refused is not None and refused.code is Reason.NOT_PERMITTED


def test_risk_about_another_agent_or_an_operator_revoke_needs_an_operator() -> None:
    """An agent reports about itself or a resource; revoking others is an operator action."""
    def signal(subject: str | None, kind: str = "behaviour_anomaly") -> RiskObserved:
        return RiskObserved(signal_id="s-1", subject_agent_id=subject,
                            resource=None if subject else "acct-1", kind=kind, severity=0.9,
                            source="x", observed_at=NOW)

    agent = Principal(A, "agent", "k")
    assert authorize_event(agent, signal(A)) is None
    assert authorize_event(agent, signal(None)) is None
    other = authorize_event(agent, signal(B))
    assert other is not None and other.code is Reason.NOT_PERMITTED
    revoke = authorize_event(agent, signal(A, OPERATOR_REVOKE_KIND))
    assert revoke is not None and revoke.code is Reason.NOT_PERMITTED
    assert authorize_event(ALICE, signal(B, OPERATOR_REVOKE_KIND)) is None


def test_an_agent_takes_tokens_only_for_its_own_grants() -> None:
    """Naming another agent's grant is refused, naming the actor in the reason."""
    cmd = GrantCommand(command_id="c-1", agent_id=A, grant_id="g-1", grant_agent_id=B,
                       action="token", issued_at=NOW)
    why = grant_owner_problem(cmd)
    assert why is not None and why.code is Reason.NOT_YOUR_GRANT
    assert f"agent {A} may obtain tokens only for its own grants" in why.detail
    assert grant_owner_problem(cmd.model_copy(update={"grant_agent_id": None})) is None


def test_revoking_one_grant_needs_an_operator() -> None:
    """An operator revokes any agent's grant (no standing of the agent's needed); no agent
    revokes a grant, not even its own (it releases it), nor another agent's; a service never."""
    revoke = GrantCommand(command_id="c-2", agent_id=A, grant_id="g-1", action="revoke",
                          reason="leaked", issued_at=NOW)
    assert authorize_event(ALICE, revoke) is None
    assert not is_agent_request(revoke)
    service = Principal("service:permbroker-api", "service", "kid-service-1")
    for signer in (Principal(A, "agent", "k"), Principal(B, "agent", "kb"), service):
        refused = authorize_event(signer, revoke)
        assert refused is not None and refused.code is Reason.NOT_PERMITTED
    other = grant_owner_problem(revoke.model_copy(update={"grant_agent_id": B}))
    assert other is not None and other.code is Reason.INVALID
