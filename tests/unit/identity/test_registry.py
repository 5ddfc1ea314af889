"""Registry transitions (pure): who may change what, key rotation, effects, idempotence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.identity.registry import (
    Enrollment,
    Limits,
    RegistryOutcome,
    apply_command,
    model_change_signal,
)
from broker.identity.rules import Principal, Reason, thumbprint
from schemas.events import AgentCommand, AgentProfile, AgentRecord, ModelInfo, PublicJwk

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
A = "fraud-1"
K1 = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
K2 = PublicJwk(kty="OKP", crv="Ed25519", x="2bYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURoA")
ALICE = Principal("operator:alice", "operator", "op-kid-01")
LIMITS = Limits(agent_key_overlap_s=300, known_classes=frozenset({"fraud-detection"}))
PROFILE = AgentProfile(agent_id=A, agent_class="fraud-detection", owner="ops@example.com",
                       model=ModelInfo(name="gbm", version="3.2", digest="sha256:aa"))


def cmd(action: str, n: int = 1, **fields: object) -> AgentCommand:
    return AgentCommand.model_validate({"command_id": f"c-{action}-{n}", "action": action,
                                        "agent_id": A, "issued_at": NOW, **fields})


def run(current: AgentRecord | None, command: AgentCommand, signer: Principal = ALICE,
        offset: int = 10, at: datetime = NOW, **kw: object) -> RegistryOutcome:
    return apply_command(current, command, signer, at=at, offset=offset, limits=LIMITS,
                         **kw)  # type: ignore[arg-type]


def registered() -> AgentRecord:
    out = run(None, cmd("register", profile=PROFILE, key=K1), offset=1)
    assert out.record is not None
    return out.record


def test_operator_registers_an_agent_with_its_public_key() -> None:
    """The record starts active at revision 1 with the key (kid = thumbprint)."""
    record = registered()
    assert record.status == "active" and record.revision == 1
    assert [k.kid for k in record.keys] == [thumbprint(K1)]
    assert record.changed_by == "operator:alice" and record.cause_offset == 1


def test_unknown_class_and_double_registration_are_refused() -> None:
    """The class must exist in the policy; an agent is registered once."""
    bad = run(None, cmd("register", profile=PROFILE.model_copy(update={"agent_class": "nope"}),
                        key=K1))
    assert bad.refusal is not None and "not defined by the policy" in bad.refusal.detail
    again = run(registered(), cmd("register", 2, profile=PROFILE, key=K2), offset=11)
    assert again.refusal is not None and "already registered" in again.refusal.detail


@pytest.mark.parametrize("action", ["update", "suspend", "resume", "revoke_key",
                                    "rotate_broker_key"])
def test_operator_actions_are_refused_to_agent_credentials(action: str) -> None:
    """An agent's key cannot suspend, resume, update, revoke keys or rotate broker keys."""
    out = run(registered(), cmd(action, profile=PROFILE, kid=thumbprint(K1)),
              signer=Principal(A, "agent", thumbprint(K1)))
    assert out.refusal is not None and out.refusal.code is Reason.NOT_PERMITTED
    assert "agent credentials" in out.refusal.detail or "operator" in out.refusal.detail


def test_agent_rotates_only_its_own_key_and_the_old_one_retires_after_the_overlap() -> None:
    """Rotation adds the new key; the old one becomes retiring with not_after = now + overlap."""
    record = registered()
    other = run(record, cmd("rotate_key", key=K2), signer=Principal("b", "agent", "kid-b-0001"))
    assert other.refusal is not None and other.refusal.code is Reason.NOT_PERMITTED
    out = run(record, cmd("rotate_key", key=K2, overlap_s=9999),
              signer=Principal(A, "agent", thumbprint(K1)))
    assert out.record is not None and out.record.change == "key_rotated"
    old, new = out.record.keys
    assert old.status == "retiring" and old.not_after == NOW + timedelta(seconds=300)
    assert new.kid == thumbprint(K2) and new.status == "active" and new.added_at == NOW


def test_suspend_revokes_and_resume_reactivates() -> None:
    """Suspension revokes all grants (rule registry:suspended); resume makes it active again."""
    out = run(registered(), cmd("suspend", reason="investigation"))
    assert out.record is not None and out.record.status == "suspended"
    assert out.revoke is not None and out.revoke.rule == "registry:suspended"
    assert "investigation" in out.revoke.reason
    back = run(out.record, cmd("resume"), offset=11)
    assert back.record is not None and back.record.status == "active" and back.revoke is None


def test_revoking_a_key_quarantines_the_agent_and_revokes_its_grants() -> None:
    """A compromised key: key revoked, agent quarantined, every grant revoked."""
    out = run(registered(), cmd("revoke_key", kid=thumbprint(K1), reason="leaked"))
    assert out.record is not None and out.record.status == "quarantined"
    assert out.record.keys[0].status == "revoked" and out.record.keys[0].revoked_at == NOW
    assert out.revoke is not None and out.revoke.rule == "registry:key-revoked"


def test_model_change_is_reported_with_both_versions() -> None:
    """A new model version yields a model_changed signal naming old and new."""
    newer = PROFILE.model_copy(update={"model": ModelInfo(name="gbm", version="3.3")})
    out = run(registered(), cmd("update", profile=newer))
    assert out.model_change is not None
    signal = model_change_signal(cmd("update"), *out.model_change, NOW)
    assert signal.kind == "model_changed" and signal.subject_agent_id == A
    assert "3.2" in signal.source and "3.3" in signal.source
    same = run(registered(), cmd("update", profile=PROFILE.model_copy(update={"owner": "x"})))
    assert same.model_change is None


def test_a_redelivered_command_is_not_applied_twice() -> None:
    """A command at or below the record's offset (a redelivery) changes nothing."""
    suspended = run(registered(), cmd("suspend"), offset=10).record
    assert suspended is not None
    resumed = run(suspended, cmd("resume"), offset=11).record
    assert resumed is not None
    redelivered = run(resumed, cmd("suspend"), offset=10)
    assert redelivered.already_applied and redelivered.record == resumed


def test_self_registration_needs_an_enrollment_for_that_agent_and_proof_of_possession() -> None:
    """With an operator's enrollment and signed by the key it registers, an agent enrolls."""
    enrollment = Enrollment(jti="e-1", issuer="operator:alice", agent_id=A, profile=PROFILE)
    me = Principal(A, "agent", thumbprint(K1))
    command = cmd("register", key=K1, enrollment="token")
    ok = run(None, command, signer=me, enrollment=enrollment)
    assert ok.record is not None and ok.record.enrollment_id == "e-1"
    assert ok.record.changed_by == A
    other_key = run(None, command, signer=Principal(A, "agent", "some-other-kid"),
                    enrollment=enrollment)
    assert other_key.refusal is not None and "proof of possession" in other_key.refusal.detail
    no_token = run(None, cmd("register", key=K1), signer=me)
    assert no_token.refusal is not None and no_token.refusal.code is Reason.NOT_PERMITTED
    wrong = Enrollment(jti="e-2", issuer="operator:alice", agent_id="someone-else",
                       profile=PROFILE)
    assert run(None, command, signer=me, enrollment=wrong).refusal is not None
