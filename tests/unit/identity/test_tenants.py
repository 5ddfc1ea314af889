"""Tenants (pure): qualified ids, who may register where, each tenant's bundle and classes."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.errors import PolicyError
from broker.identity.registry import Limits, RegistryOutcome, apply_command
from broker.identity.rules import Principal
from broker.identity.tenants import Tenancy, id_problem, load_tenancy, qualify, visible
from broker.policy import load_policy
from schemas.events import AgentCommand, AgentProfile, ModelInfo, PublicJwk

POLICIES = Path(__file__).resolve().parents[3] / "policies"
FRAUD = load_policy(POLICIES / "fraud")
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
K1 = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
ALICE = Principal("operator:alice", "operator", "op-kid-01")
LIMITS = Limits(known_classes=frozenset({"fraud-detection"}),
                known_tenants=frozenset({"default", "acme", "globex"}),
                tenant_classes={"acme": frozenset({"fraud-detection"}),
                                "globex": frozenset({"reporting"})})


def profile(agent_id: str, tenant: str = "default", agent_class: str = "fraud-detection"
            ) -> AgentProfile:
    return AgentProfile(agent_id=agent_id, agent_class=agent_class, owner="ops@example.com",
                        tenant=tenant, model=ModelInfo(name="gbm", version="3.2"))


def register(p: AgentProfile) -> RegistryOutcome:
    command = AgentCommand.model_validate({
        "command_id": f"c-{p.agent_id}", "action": "register", "agent_id": p.agent_id,
        "issued_at": NOW, "profile": p, "key": K1})
    return apply_command(None, command, ALICE, at=NOW, offset=1, limits=LIMITS)


def test_ids_are_qualified_by_tenant_and_bare_in_the_default_tenant() -> None:
    """Two tenants may both name an agent fraud-agent; the default tenant's ids are unchanged."""
    assert qualify("acme", "fraud-agent") == "acme:fraud-agent"
    assert qualify("globex", "fraud-agent") == "globex:fraud-agent"
    assert qualify("default", "fraud-agent") == "fraud-agent"


def test_an_agent_registers_only_under_its_own_tenants_prefix() -> None:
    """A tenant's agent carries its prefix; nobody takes another tenant's prefix or a tenant
    without a bundle; the default tenant keeps bare ids."""
    known = {"default", "acme", "globex"}
    assert id_problem("acme:fraud-agent", "acme", known) is None
    assert id_problem("fraud-agent", "default", known) is None
    assert "qualified by its tenant" in (id_problem("fraud-agent", "acme", known) or "")
    assert "qualified by its tenant" in (id_problem("globex:fraud-agent", "acme", known) or "")
    assert "qualified by tenant acme" in (id_problem("acme:fraud-agent", "default", known) or "")
    assert "no policy bundle" in (id_problem("initech:x", "initech", known) or "")
    assert "not a valid tenant id" in (id_problem("Bad:x", "Bad", None) or "")


def test_the_registry_refuses_a_profile_outside_its_tenant_and_a_class_of_another_tenant(
) -> None:
    """Registration applies the tenant rules, and a class must exist in the tenant's bundle."""
    assert register(profile("acme:fraud-agent", "acme")).record is not None
    assert register(profile("globex:fraud-agent", "globex", "reporting")).record is not None
    wrong = register(profile("fraud-agent", "acme")).refusal
    assert wrong is not None and "qualified by its tenant" in wrong.detail
    foreign_class = register(profile("globex:fraud-agent", "globex")).refusal
    assert foreign_class is not None and "not defined by the policy" in foreign_class.detail


def test_an_agent_never_changes_tenant() -> None:
    """An update that moves an agent into another tenant is refused."""
    record = register(profile("acme:fraud-agent", "acme")).record
    assert record is not None
    moved = AgentCommand.model_validate({
        "command_id": "c-move", "action": "update", "agent_id": "acme:fraud-agent",
        "issued_at": NOW, "profile": profile("acme:fraud-agent", "globex")})
    out = apply_command(record, moved, ALICE, at=NOW, offset=2, limits=LIMITS)
    assert out.refusal is not None and out.record is None


def test_each_tenant_loads_its_own_bundle_and_classes(tmp_path: Path) -> None:
    """One subdirectory per tenant; a tenant without one has no classes at all."""
    shutil.copytree(POLICIES / "fraud", tmp_path / "acme")
    tenancy = load_tenancy(FRAUD, tmp_path)
    assert tenancy.tenants == {"default", "acme"}
    assert tenancy.policy("acme") is not None and tenancy.policy("acme") is not FRAUD
    assert tenancy.policy("default") is FRAUD and tenancy.policy("globex") is None
    assert "fraud-detection" in tenancy.classes("acme") and tenancy.classes("globex") == {}
    assert load_tenancy(FRAUD, None) == Tenancy(FRAUD)


@pytest.mark.parametrize("name", ["default", "Not_A_Tenant"])
def test_a_tenant_directory_is_named_by_a_tenant_id(tmp_path: Path, name: str) -> None:
    """``default`` is the worker's own bundle; other names must be tenant ids."""
    shutil.copytree(POLICIES / "fraud", tmp_path / name)
    with pytest.raises(ValueError, match="named by its tenant id"):
        load_tenancy(FRAUD, tmp_path)


def test_a_tenant_bundle_may_not_outlast_the_default_bundles_longest_grant(tmp_path: Path
                                                                           ) -> None:
    """Revocation markers are sized by the default bundle: a tenant's grants stay within it."""
    shutil.copytree(POLICIES / "fraud", tmp_path / "acme")
    doc = tmp_path / "acme" / "policy.yaml"
    longer = doc.read_text().replace("max_duration: 15m ", "max_duration: 24h ")
    doc.write_text(longer.replace("max_total_duration: 60s", "max_total_duration: 12h"))
    with pytest.raises(ValueError, match="exceeds the default bundle"):
        load_tenancy(FRAUD, tmp_path)


def test_an_operator_scoped_to_tenants_sees_only_them() -> None:
    """None is an unscoped operator (every tenant)."""
    assert visible(frozenset({"acme"}), "acme") and not visible(frozenset({"acme"}), "globex")
    assert visible(None, "globex")


def test_a_tenant_bundle_sets_its_quotas_and_a_bad_one_is_named(tmp_path: Path) -> None:
    """``quotas`` limits the tenant's escalations rate and active grants; the rules are named;
    the default bundle (without the section) limits nothing."""
    shutil.copytree(POLICIES / "fraud", tmp_path / "acme")
    doc = tmp_path / "acme" / "policy.yaml"
    text = doc.read_text()
    doc.write_text(text.replace("\nagent_classes:", "\nquotas:\n  escalations: {requests: 5, "
                                "per: 1s}\n  active_grants: 3\nagent_classes:", 1))
    quotas = load_tenancy(FRAUD, tmp_path).others["acme"].quotas
    assert quotas.active_grants == 3 and quotas.escalations is not None
    assert (quotas.escalations.requests, quotas.escalations.per_s,
            quotas.escalations.rule) == (5, 1, "quota:escalations")
    assert not FRAUD.quotas.any
    doc.write_text(text.replace("\nagent_classes:", "\nquotas:\n  active_grants: 0\n"
                                "agent_classes:", 1))
    with pytest.raises(PolicyError, match="active_grants"):
        load_tenancy(FRAUD, tmp_path)
