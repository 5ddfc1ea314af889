"""Operators scoped to tenants: the worker's identity gate refuses what they may not act on."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.adapters.crypto.keystore import OperatorDirectory, load_operator_scopes
from broker.adapters.crypto.trust import ServiceDirectory
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.registry_view import Registry
from broker.adapters.redis.identity import IdentityStore
from broker.api.routes_operator import scoped
from broker.api.runtime import Runtime
from broker.cli.scope import Scope
from broker.config import Settings
from broker.errors import KeyFileError
from broker.identity.rules import Principal
from broker.identity.tenants import DEFAULT_TENANT, asked_tenant, operator_scopes, out_of_scope
from broker.sdk.operator.client import operator_signal
from schemas.events import (
    AgentCommand,
    AgentProfile,
    AgentRecord,
    ApprovalVoted,
    GrantCommand,
    ModelInfo,
    RiskObserved,
)
from streams.identity.gate import IdentityGate

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ALICE = Principal("operator:alice", "operator", "k-a")  # acme's operator
ROOT = Principal("operator:root", "operator", "k-r")  # not in the file: every tenant
SCOPES = {"operator:alice": frozenset({"acme"})}


def profile(agent_id: str, tenant: str) -> AgentProfile:
    return AgentProfile(agent_id=agent_id, agent_class="fraud-detection", owner="ops@x.example",
                        tenant=tenant, model=ModelInfo(name="gbm", version="3"))


def gate(tmp_path: Path) -> IdentityGate:
    settings = Settings(stack_dir=tmp_path)
    g = IdentityGate(OperatorDirectory(tmp_path / "operators.json"),
                     ServiceDirectory(tmp_path / "services.json"),
                     IdentityStore.from_url("redis://127.0.0.1:1/0"), settings,
                     audit=lambda *a, **k: None, count=lambda _n: None,  # type: ignore[arg-type,return-value]
                     classes={})
    registry = Registry()
    for agent, tenant in (("acme:fraud-agent", "acme"), ("globex:fraud-agent", "globex")):
        registry.apply(AgentRecord(agent_id=agent, profile=profile(agent, tenant), keys=(),
                                   revision=1, change="registered", changed_at=NOW,
                                   changed_by="operator:root", cause_id=f"c-{agent}",
                                   registered_at=NOW))
    g.start(registry)
    g.operator_tenants = dict(SCOPES)
    return g


def revoke(agent: str) -> RiskObserved:
    return operator_signal(agent, "suspected compromise", "alice")


def test_the_pure_rule_and_the_file_format() -> None:
    """Listed operators act on their tenants only and never broker-wide; unlisted, anywhere."""
    assert out_of_scope("operator:alice", SCOPES, "acme:x", "acme") is None
    assert "not one of theirs" in (out_of_scope("operator:alice", SCOPES, "globex:x", "globex")
                                   or "")
    assert "broker-wide" in (out_of_scope("operator:alice", SCOPES, None, None) or "")
    assert out_of_scope("operator:root", SCOPES, "globex:x", "globex") is None
    assert operator_scopes({"operator:alice": ["acme", "default"]}) == {
        "operator:alice": frozenset({"acme", "default"})}
    assert operator_scopes({"service:payments": ["acme"]}) == {
        "service:payments": frozenset({"acme"})}
    for bad in ([], {"alice": ["acme"]}, {"operator:alice": "acme"}, {"agent:x": ["acme"]},
                {"operator:alice": ["Not A Tenant"]}):
        with pytest.raises(ValueError):
            operator_scopes(bad)


def test_the_file_is_read_and_an_invalid_one_refused(tmp_path: Path) -> None:
    """No file: nobody scoped; a broken file stops the process that reads it."""
    assert load_operator_scopes(None) == {}
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"operator:alice": ["acme"]}')
    bad.write_text('{"operator:alice": "acme"}')
    assert load_operator_scopes(good) == SCOPES
    with pytest.raises(KeyFileError):
        load_operator_scopes(bad)


def test_an_operator_of_one_tenant_cannot_act_on_the_other_tenants_agents(tmp_path: Path
                                                                          ) -> None:
    """Revoke, registry commands, grant revocations and votes on globex's agent are refused to
    acme's operator; the same on acme's agent, and anything by an unscoped operator, pass."""
    g = gate(tmp_path)
    assert g._out_of_scope(ALICE, revoke("acme:fraud-agent")) is None
    refused = g._out_of_scope(ALICE, revoke("globex:fraud-agent"))
    assert refused is not None and refused.code.value == "not-permitted"
    assert g._out_of_scope(ROOT, revoke("globex:fraud-agent")) is None
    suspend = AgentCommand(command_id="c1", action="suspend", agent_id="globex:fraud-agent",
                           issued_at=NOW)
    steal = AgentCommand(command_id="c2", action="update", agent_id="globex:fraud-agent",
                         profile=profile("globex:fraud-agent", "acme"), issued_at=NOW)
    register = AgentCommand(command_id="c3", action="register", agent_id="globex:new",
                            profile=profile("globex:new", "globex"), issued_at=NOW)
    broker_wide = AgentCommand(command_id="c4", action="rotate_broker_key", issued_at=NOW)
    grant = GrantCommand(command_id="c5", agent_id="globex:fraud-agent", grant_id="g-1",
                         action="revoke", issued_at=NOW)
    vote = ApprovalVoted(vote_id="v1", request_id="r1", agent_id="globex:fraud-agent",
                         approver="operator:alice", verdict="approve", voted_at=NOW)
    for event in (suspend, steal, register, broker_wide, grant, vote):
        assert g._out_of_scope(ALICE, event) is not None, event
    own = AgentCommand(command_id="c6", action="register", agent_id="acme:new",
                       profile=profile("acme:new", "acme"), issued_at=NOW)
    assert g._out_of_scope(ALICE, own) is None


def test_the_api_shows_a_scoped_operator_only_registered_agents_of_its_tenants(
        tmp_path: Path) -> None:
    """The filter every API route and console page applies: own tenant yes, other tenant, an
    unknown agent or no agent at all no; an unscoped operator (or an agent) is not filtered."""
    scopes = tmp_path / "operator-tenants.json"
    scopes.write_text('{"operator:alice": ["acme"]}')
    runtime = Runtime(Settings(stack_dir=tmp_path, operator_tenants_file=scopes),
                      KafkaAccess("127.0.0.1:1"))
    runtime.registry = gate(tmp_path).registry  # type: ignore[assignment]
    assert runtime.sees("operator:alice", "acme:fraud-agent")
    for hidden in ("globex:fraud-agent", "acme:unknown", None):
        assert not runtime.sees("operator:alice", hidden), hidden
    assert runtime.sees("operator:root", "globex:fraud-agent")
    assert runtime.tenant_of("globex:fraud-agent") == "globex"


def test_the_cli_scope_shows_a_scoped_operator_only_registered_agents_of_its_tenants() -> None:
    """An unregistered agent, another tenant's agent and a broker-wide record are left out."""
    scope = Scope("operator:acme", frozenset({"acme"}),
                  {"acme:fraud": "acme", "globex:fraud": "globex", "fraud": "default"})
    assert scope.sees("acme:fraud") and not scope.everything
    assert not any(scope.sees(a) for a in ("globex:fraud", "fraud", "acme:unknown", None))
    assert scope.keep(["acme:fraud", "globex:fraud", "fraud"], str) == ["acme:fraud"]
    every = Scope("operator:root")
    assert every.everything and every.sees(None) and every.sees("globex:fraud")


def test_the_revocation_status_keeps_only_rows_about_agents_the_operator_sees() -> None:
    """Revocations, acknowledgements and unacknowledged rows of another tenant are cut."""
    row = {"cause_event_id": "c", "revoked_at": "t", "rule": "r", "grant_ids": []}
    status = {"revocations": [{**row, "agent_id": "acme:a"}, {**row, "agent_id": "globex:a"}],
              "enforcement_points": [{"name": "p", "p50_ms": 1.0,
                                      "confirmed": [{"agent_id": "globex:a"}],
                                      "unconfirmed": [{"agent_id": "acme:a"}]}]}
    mine = scoped(status, lambda agent_id: agent_id == "acme:a")
    assert [r["agent_id"] for r in mine["revocations"]] == ["acme:a"]
    point = mine["enforcement_points"][0]
    assert point["confirmed"] == [] and point["unconfirmed"] == [{"agent_id": "acme:a"}]
    assert point["p50_ms"] == 1.0 and scoped(status, lambda _: True) == status


def test_a_read_about_one_tenant_is_for_the_asked_one_else_the_operators_only_one() -> None:
    """Asked: that tenant; not asked: the operator's one tenant, else the default tenant."""
    assert asked_tenant(frozenset({"acme"}), "globex") == "globex"
    assert asked_tenant(frozenset({"acme"}), None) == "acme"
    assert asked_tenant(frozenset({"acme", "globex"}), None) == DEFAULT_TENANT
    assert asked_tenant(None, None) == DEFAULT_TENANT
