"""Baseline statements and decommissioning (pure): what a record entitles, deterministically;
decommission retires every key and withdraws the baseline; the id comes back only reinstated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.identity.baseline import baseline_audit, entitlement_of
from broker.identity.registry import Limits, RegistryOutcome, apply_command
from broker.identity.rules import Principal, Reason, agent_usable, thumbprint
from schemas.events import AgentCommand, AgentProfile, AgentRecord, ModelInfo, PublicJwk

READ = "payments:transactions.read"
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
        offset: int = 10, at: datetime = NOW) -> RegistryOutcome:
    return apply_command(current, command, signer, at=at, offset=offset, limits=LIMITS)


def registered() -> AgentRecord:
    out = run(None, cmd("register", profile=PROFILE, key=K1), offset=1)
    assert out.record is not None
    return out.record


def _next(current: AgentRecord, action: str, n: int, offset: int, **fields: object
          ) -> AgentRecord:
    out = run(current, cmd(action, n, reason=f"{action} {n}", **fields), offset=offset,
              at=NOW + timedelta(minutes=n))
    assert out.record is not None, out.refusal
    return out.record


def test_an_active_record_states_its_class_baseline_and_others_withdraw_it() -> None:
    """Active: the class's scopes (sorted, once); suspended: none, saying who and why."""
    record = registered()
    active = entitlement_of(record, (READ, READ), policy_revision="p1")
    assert active.status == "active" and active.scopes == (READ,)
    assert active.registry_revision == 1 and active.effective_at == record.changed_at
    suspended = _next(record, "suspend", 2, 20)
    withdrawn = entitlement_of(suspended, (READ,), policy_revision="p1")
    assert withdrawn.status == "withdrawn" and withdrawn.scopes == ()
    assert "suspended" in withdrawn.reason and "operator:alice" in withdrawn.reason


def test_a_statement_is_deterministic_and_changes_with_record_or_policy() -> None:
    """Same record and policy: same id (a redelivery or restart states nothing new)."""
    record = registered()
    one = entitlement_of(record, (READ,), policy_revision="p1")
    assert one == entitlement_of(record, (READ,), policy_revision="p1")
    other = entitlement_of(record, (READ,), policy_revision="p2")
    assert one.entitlement_id != other.entitlement_id
    audit = baseline_audit(one, NOW)
    assert audit.kind == "baseline.entitled" and audit.rules == ("baseline",)
    assert audit.inputs["event"] == one.model_dump(mode="json")


def test_decommission_revokes_retires_every_key_and_withdraws_the_baseline() -> None:
    """Every key revoked, status decommissioned, grants revoked; the agent may not act."""
    record = _next(registered(), "rotate_key", 2, 20, key=K2)
    gone = run(record, cmd("decommission", 3, reason="retired"), offset=30)
    assert gone.record is not None and gone.revoke is not None
    assert gone.revoke.rule == "registry:decommissioned"
    assert gone.record.status == "decommissioned" and gone.record.change == "decommissioned"
    assert {k.status for k in gone.record.keys} == {"revoked"}
    assert entitlement_of(gone.record, (READ,), policy_revision="p").status == "withdrawn"
    problem = agent_usable(gone.record)
    assert problem is not None and problem.code is Reason.DECOMMISSIONED


def test_a_decommissioned_id_registers_again_only_when_reinstated_with_a_new_key() -> None:
    """register and resume are refused; reinstate with an old key is refused; with a new key
    the agent is active again and its old keys stay revoked."""
    gone = _next(registered(), "decommission", 2, 20)
    again = run(gone, cmd("register", 3, profile=PROFILE, key=K2), offset=30)
    assert again.refusal is not None and again.refusal.code is Reason.DECOMMISSIONED
    assert "agents reinstate" in again.refusal.detail
    resumed = run(gone, cmd("resume", 4), offset=31)
    assert resumed.refusal is not None and resumed.refusal.code is Reason.DECOMMISSIONED
    old_key = run(gone, cmd("reinstate", 5, key=K1), offset=32)
    assert old_key.refusal is not None and "new public key" in old_key.refusal.detail
    back = _next(gone, "reinstate", 6, 33, key=K2)
    assert back.status == "active" and back.change == "reinstated"
    assert [(k.kid, k.status) for k in back.keys] == [(thumbprint(K1), "revoked"),
                                                       (thumbprint(K2), "active")]


def test_agents_cannot_decommission_or_reinstate() -> None:
    """Operator actions: an agent's own key is refused."""
    record = registered()
    me = Principal(A, "agent", thumbprint(K1))
    for action in ("decommission", "reinstate"):
        out = run(record, cmd(action, 2, key=K2), signer=me, offset=20)
        assert out.refusal is not None and out.refusal.code is Reason.NOT_PERMITTED
