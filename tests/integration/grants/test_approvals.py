"""Approvals with quorum and graduated grants, end to end on real Kafka + Redis + a worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.bus import Publisher
from broker.api.app import create_app
from broker.cli.main import app
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.sdk.operator.approvals import Approver
from broker.sdk.operator.client import revoke
from broker.stack.credentials import role_access, role_settings
from schemas import topics
from schemas.events import (
    ApprovalVoted,
    AuditRecord,
    EscalationDecided,
    EscalationPending,
    GrantIssued,
)
from tests.support.approval_policy import requester, verifier
from tests.support.factories import fraud_request
from tests.support.identities import Registrar, operator_auth, shared_trust
from tests.support.taps import Tap

FREEZE, UNFREEZE, PII = ("payments:accounts.freeze", "payments:accounts.unfreeze",
                         "crm:customer.pii.read")
WAIT = 90.0  # generous: six engineers share two cores


@pytest.fixture
def approvers(settings: Settings, registrar: Registrar,
              run_id: str) -> Callable[[str], Approver]:
    """Approver clients signing with the (registered) agent's own key."""
    keys = AgentKeyStore.from_settings(settings)

    def make(agent_id: str) -> Approver:
        registrar.ensure(agent_id)
        return Approver.agent(agent_id, role_access(settings, topics.AGENT), keys=keys)

    for n in range(3):
        registrar.ensure(verifier(run_id, n))
    return make


def _decided(decisions: Tap, request_id: str) -> EscalationDecided:
    return decisions.wait_for(EscalationDecided, lambda d: d.request_id == request_id,
                              timeout=WAIT)[0]


def _held(decisions: Tap, request_id: str) -> EscalationPending:
    return decisions.wait_for(EscalationPending, lambda d: d.request_id == request_id,
                              timeout=WAIT)[0]


def _vote_audited(audit: Tap, request_id: str, outcome: str, count: int = 1) -> None:
    audit.wait_for(AuditRecord, lambda r: r.kind == "approval.voted"
                   and r.subject_id == request_id and r.outcome == outcome,
                   count=count, timeout=WAIT)


def _appended_at(votes: Tap, vote: ApprovalVoted) -> datetime:
    """The Kafka append time of a vote (LogAppendTime on the approvals topic)."""
    def found() -> list[int]:
        return [r.timestamp_ms for r in votes.records
                if isinstance(r.event, ApprovalVoted) and r.event.vote_id == vote.vote_id]
    votes.wait_for(ApprovalVoted, lambda v: v.vote_id == vote.vote_id, timeout=WAIT)
    return datetime.fromtimestamp(found()[0] / 1000, tz=UTC)


def test_two_of_three_grant_counts_the_full_duration_from_the_deciding_approval(
    settings: Settings, run_id: str, registrar: Registrar, tap: Callable[[str], Tap],
    approvers: Callable[[str], Approver],
) -> None:
    """2 of 3: pending after one approval, granted at the second, expiry = its append + 600s."""
    agent = registrar.ensure(requester(run_id, "a", 1))
    decisions, audit, votes, grants = (tap(t) for t in (
        topics.DECISIONS.name, topics.AUDIT_RAW.name, topics.APPROVALS.name, topics.GRANTS.name))
    client = AgentClient(agent, role_access(settings, topics.AGENT),
                         keys=AgentKeyStore.from_settings(settings), trust=shared_trust(settings))
    try:
        request = fraud_request(agent, scopes=(FREEZE,), duration_s=600)
        client.send(request)
        pending = client.await_pending(request.request_id, timeout=WAIT)
        assert isinstance(pending, EscalationPending)  # the agent learns it is held
        assert pending.quorum == 2 and len(pending.approvers) == 3
        assert pending.duration_s == 600 and pending.scopes == (FREEZE,)

        approvers(verifier(run_id, 0)).approve(request.request_id, agent, "checked")
        _vote_audited(audit, request.request_id, "counted")
        assert not decisions.events(EscalationDecided, lambda d: d.request_id ==
                                    request.request_id), "one approval of two granted it"
        second = approvers(verifier(run_id, 1)).approve(request.request_id, agent, "agreed")

        decided = client.await_decision(request.request_id, timeout=WAIT)
    finally:
        client.close()
    assert decided.outcome == "granted", decided.reasons
    assert set(decided.approvals) == {verifier(run_id, 0), verifier(run_id, 1)}
    approved_at = _appended_at(votes, second)
    assert decided.decided_at == approved_at
    assert decided.duration_s == 600
    assert decided.expires_at == approved_at + timedelta(seconds=600)
    grant = grants.wait_for(GrantIssued, lambda g: g.request_id == request.request_id,
                            timeout=WAIT)[0]
    assert grant.expires_at == decided.expires_at and grant.scopes == (FREEZE,)
    assert pending.window_expires_at < approved_at + timedelta(seconds=600)


def test_self_approval_is_refused_and_never_counts(
    run_id: str, registrar: Registrar, publisher: Publisher, tap: Callable[[str], Tap],
    approvers: Callable[[str], Approver],
) -> None:
    """The requester, though listed as an approver, cannot approve itself (quorum 1)."""
    agent = registrar.ensure(requester(run_id, "a", 0))
    decisions, audit = tap(topics.DECISIONS.name), tap(topics.AUDIT_RAW.name)
    request = fraud_request(agent, scopes=(UNFREEZE,), duration_s=300)
    publisher.publish(topics.ESCALATIONS.name, request)
    _held(decisions, request.request_id)

    own = approvers(agent).approve(request.request_id, agent, "trust me")
    refused = audit.wait_for(AuditRecord, lambda r: r.kind == "identity.rejected"
                             and r.subject_id == own.vote_id, timeout=WAIT)[0]
    assert refused.rules == ("identity:self-approval",)
    assert not decisions.events(EscalationDecided, lambda d: d.request_id == request.request_id)

    approvers(verifier(run_id, 0)).approve(request.request_id, agent, "fine")
    decided = _decided(decisions, request.request_id)
    assert decided.outcome == "granted" and decided.approvals == (verifier(run_id, 0),)


def test_one_deny_ends_the_request(
    run_id: str, registrar: Registrar, publisher: Publisher, tap: Callable[[str], Tap],
    approvers: Callable[[str], Approver],
) -> None:
    """An approval then a deny: denied (approval-denied); a later approval changes nothing."""
    agent = registrar.ensure(requester(run_id, "a", 2))
    decisions, audit, grants = (tap(t) for t in (
        topics.DECISIONS.name, topics.AUDIT_RAW.name, topics.GRANTS.name))
    request = fraud_request(agent, scopes=(FREEZE,), duration_s=300)
    publisher.publish(topics.ESCALATIONS.name, request)
    _held(decisions, request.request_id)

    approvers(verifier(run_id, 0)).approve(request.request_id, agent)
    _vote_audited(audit, request.request_id, "counted")
    approvers(verifier(run_id, 1)).deny(request.request_id, agent, "not convinced")
    decided = _decided(decisions, request.request_id)
    assert decided.outcome == "denied" and decided.grant_id is None
    assert {d.rule for d in decided.denied} == {"approval-denied"}
    assert verifier(run_id, 1) in decided.denied[0].reason

    approvers(verifier(run_id, 2)).approve(request.request_id, agent)
    _vote_audited(audit, request.request_id, "closed")
    assert len(decisions.events(EscalationDecided,
                                lambda d: d.request_id == request.request_id)) == 1
    assert not grants.events(GrantIssued, lambda g: g.request_id == request.request_id)


def test_an_unanswered_request_expires_with_that_outcome(
    run_id: str, registrar: Registrar, publisher: Publisher, tap: Callable[[str], Tap],
) -> None:
    """No vote within the 3s window: denied approval-expired, audited, no grant."""
    agent = registrar.ensure(requester(run_id, "a", 3))
    decisions, audit = tap(topics.DECISIONS.name), tap(topics.AUDIT_RAW.name)
    request = fraud_request(agent, scopes=(PII,), duration_s=300)
    publisher.publish(topics.ESCALATIONS.name, request)
    pending = _held(decisions, request.request_id)
    decided = _decided(decisions, request.request_id)
    assert decided.outcome == "denied" and decided.grant_id is None
    assert {d.rule for d in decided.denied} == {"approval-expired"}
    assert "approval-expired" in decided.matched_rules
    assert any("approval-expired" in r for r in decided.reasons)
    assert decided.decided_at == pending.window_expires_at
    record = audit.wait_for(AuditRecord, lambda r: r.kind == "approval.decided"
                            and r.subject_id == request.request_id, timeout=WAIT)[0]
    assert record.outcome == "denied" and "approval-expired" in record.rules


def test_an_approval_never_undoes_a_revocation(
    settings: Settings, run_id: str, registrar: Registrar, publisher: Publisher,
    tap: Callable[[str], Tap], approvers: Callable[[str], Approver],
) -> None:
    """Revoked while held: the quorum is reached, yet the request is denied (revocation)."""
    agent = registrar.ensure(requester(run_id, "a", 4))
    decisions = tap(topics.DECISIONS.name)
    request = fraud_request(agent, scopes=(FREEZE,), duration_s=300)
    publisher.publish(topics.ESCALATIONS.name, request)
    _held(decisions, request.request_id)
    revoke(settings, role_access(settings, topics.OPERATOR), agent, "suspicious while held",
           operator="tests", trust=shared_trust(settings), timeout=WAIT)
    for n in (0, 1):
        approvers(verifier(run_id, n)).approve(request.request_id, agent)
    decided = _decided(decisions, request.request_id)
    assert decided.outcome == "denied" and decided.grant_id is None
    assert {d.rule for d in decided.denied} == {"revocation"}


def test_graduated_grants_three_bands(
    run_id: str, registrar: Registrar, publisher: Publisher, tap: Callable[[str], Tap],
) -> None:
    """confidence >= 0.95: 15m with freeze; 0.8-0.95: 5m read-only, freeze held; below: deny."""
    decisions = tap(topics.DECISIONS.name)
    agents = [registrar.ensure(requester(run_id, "g", n)) for n in range(3)]
    confident = fraud_request(agents[0], scopes=(FREEZE, PII), duration_s=900, confidence=0.97)
    read_only = fraud_request(agents[1], scopes=(PII,), duration_s=900, confidence=0.85)
    unsure = fraud_request(agents[1], scopes=(FREEZE, PII), duration_s=900, confidence=0.85)
    low = fraud_request(agents[2], scopes=(PII,), duration_s=900, confidence=0.5)
    publisher.publish_many(topics.ESCALATIONS.name, [confident, read_only, unsure, low])

    high = _decided(decisions, confident.request_id)
    assert high.outcome == "granted" and set(high.granted_scopes) == {FREEZE, PII}
    assert high.duration_s == 900 and high.tiers == ("graduated/confident",)
    mid = _decided(decisions, read_only.request_id)
    assert mid.outcome == "granted" and mid.granted_scopes == (PII,)
    assert mid.duration_s == 300 and mid.tiers == ("graduated/unsure",)
    held = _held(decisions, unsure.request_id)
    assert held.quorum == 2 and held.duration_s == 300 and set(held.scopes) == {FREEZE, PII}
    denied = _decided(decisions, low.request_id)
    assert denied.outcome == "denied" and {d.rule for d in denied.denied} == {"default-deny"}
    assert "no tier of rule graduated matched" in denied.denied[0].reason


def test_operators_approve_through_the_cli_and_the_api_counting_once(
    settings: Settings, run_id: str, registrar: Registrar, publisher: Publisher,
    tap: Callable[[str], Tap], approvers: Callable[[str], Approver],
) -> None:
    """`approvals list --json` shows the window; an operator approves by CLI, the same operator
    again by API (a duplicate: counted once), then a verifier agent reaches the quorum of 2."""
    agent = registrar.ensure(requester(run_id, "a", 5))
    decisions, audit = tap(topics.DECISIONS.name), tap(topics.AUDIT_RAW.name)
    request = fraud_request(agent, scopes=("payments:accounts.read",), duration_s=300)
    publisher.publish(topics.ESCALATIONS.name, request)
    pending = _held(decisions, request.request_id)
    env = {**role_access(settings, topics.OPERATOR).env(),
           "PERMBROKER_REDIS_URL": settings.redis_url,
           "PERMBROKER_STACK_DIR": str(settings.stack_dir)}
    listed = CliRunner().invoke(app, ["approvals", "list", "--agent", agent, "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["request_id"] == request.request_id)
    assert row["status"] == "pending" and row["votes"] == {} and row["quorum"] == 2
    assert datetime.fromisoformat(row["window_expires_at"]) == pending.window_expires_at
    assert 0 < row["window_remaining_s"] <= 300

    voted = CliRunner().invoke(app, ["approvals", "approve", request.request_id, "--agent",
                                     agent, "--reason", "looked at it"], env=env)
    assert voted.exit_code == 0, voted.output
    _vote_audited(audit, request.request_id, "counted")
    op = operator_auth(settings)  # the operator who voted through the CLI
    with TestClient(create_app(role_settings(settings, topics.API))) as api:
        rows = api.get("/v1/operator/approvals", params={"agent": agent}, auth=op).json()
        assert list(rows[0]["votes"].values()) == ["approve"]
        assert api.post(f"/v1/operator/approvals/{agent}/{request.request_id}/approve",
                        json={}).status_code == 401
        again = api.post(f"/v1/operator/approvals/{agent}/{request.request_id}/approve",
                         json={"reason": "me again"}, auth=op)
        assert again.status_code == 200, again.text
    _vote_audited(audit, request.request_id, "duplicate")
    assert not decisions.events(EscalationDecided, lambda d: d.request_id == request.request_id)

    approvers(verifier(run_id, 0)).approve(request.request_id, agent)
    decided = _decided(decisions, request.request_id)
    assert decided.outcome == "granted" and len(decided.approvals) == 2
