"""Two tenants on one worker (twins): each decides under its own bundle, grants carry the tenant.

The same agent name in two tenants (``acme:fraud-agent``, ``globex:fraud-agent``) sends the same
request; acme's bundle is then changed to deny the freeze, and globex's decision stays the same.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from broker.adapters.kafka import codec
from broker.delivery.routing import GrantRouting
from broker.identity.tenants import Tenancy, load_tenancy
from broker.policy import load_policy
from schemas import topics
from schemas.events import (
    AgentProfile,
    EscalationDecided,
    EscalationRequested,
    GrantIssued,
    ModelInfo,
    RoutingAnnounced,
)
from streams.escalations import Escalations
from streams.worker import Incoming, OpenGate, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

POLICIES = Path(__file__).resolve().parents[3] / "policies"
FRAUD = load_policy(POLICIES / "fraud")
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
ACME, GLOBEX = "acme:fraud-agent", "globex:fraud-agent"
NO_FREEZE = """
  - id: acme-no-freeze
    scopes: ["payments:accounts.freeze"]
    when: "true"
    reason: acme freezes accounts by hand only
"""


class TenantGate(OpenGate):
    """Registered profiles with their tenant; baseline and ceiling from the tenant's bundle."""

    def __init__(self, tenancy: Tenancy) -> None:
        super().__init__(tenancy.default)
        self.tenancy = tenancy

    def profile(self, agent_id: str) -> AgentProfile | None:
        tenant = agent_id.partition(":")[0] if ":" in agent_id else "default"
        baseline, ceiling = self.tenancy.classes(tenant)["fraud-detection"]
        return AgentProfile(agent_id=agent_id, agent_class="fraud-detection", tenant=tenant,
                            owner=f"ops@{tenant}.example", model=ModelInfo(name="gbm", version="3"),
                            confidence_threshold=0.9, baseline=baseline, ceiling=ceiling)


def bundles(root: Path, *, acme_denies_freeze: bool) -> Tenancy:
    for tenant in ("acme", "globex"):
        shutil.copytree(POLICIES / "fraud", root / tenant)
    if acme_denies_freeze:
        doc = root / "acme" / "policy.yaml"
        doc.write_text(doc.read_text().replace("deny_rules:\n", "deny_rules:" + NO_FREEZE, 1))
    return load_tenancy(FRAUD, root)


async def decide_both(tenancy: Tenancy, bus: MemoryBus | None = None,
                      routing: GrantRouting | None = None, also: tuple[str, ...] = (),
                      ) -> tuple[dict[str, EscalationDecided], list[GrantIssued]]:
    bus = bus or MemoryBus()
    store = MemoryGrantStore(clock=lambda: T0, margin_s=600, view_built_at=T0)
    ctx = WorkerContext(tenancy.default, store, bus, margin_s=600, routing=routing)
    ctx.tenancy = tenancy
    ctx.tenant_of = lambda agent: agent.partition(":")[0] if ":" in agent else "default"
    ctx.ready.set()
    handler = Escalations(ctx, TenantGate(tenancy))
    for offset, agent in enumerate((ACME, GLOBEX, *also), start=1):
        encoded = codec.encode(EscalationRequested.model_validate({
            "request_id": f"req-{offset}", "agent_id": agent, "scopes": (FREEZE, PII),
            "resources": ("acct-1",), "duration_s": 900, "reason": "card testing",
            "confidence": 0.95, "risk_score": 0.85, "requested_at": T0}), source="/tests")
        await handler.on_escalation(Incoming(topics.ESCALATIONS.name, 0, offset, T0.timestamp(),
                                             encoded.key, encoded.value, encoded.headers))
    decisions = {e.agent_id: e for e in bus.events(topics.DECISIONS.name)
                 if isinstance(e, EscalationDecided)}
    return decisions, [e for e in bus.events(topics.GRANTS.name) if isinstance(e, GrantIssued)]


async def test_the_same_agent_name_in_two_tenants_is_decided_under_each_tenants_bundle(
        tmp_path: Path) -> None:
    """acme's deny rule binds acme's agent only; each grant names its holder's tenant."""
    decisions, grants = await decide_both(bundles(tmp_path, acme_denies_freeze=True))
    acme, globex = decisions[ACME], decisions[GLOBEX]
    assert acme.granted_scopes == (PII,) and [d.rule for d in acme.denied] == ["acme-no-freeze"]
    assert set(globex.granted_scopes) == {FREEZE, PII} and not globex.denied
    assert acme.policy_revision != globex.policy_revision
    assert {(g.agent_id, g.tenant) for g in grants} == {(ACME, "acme"), (GLOBEX, "globex")}


async def test_a_policy_change_in_one_tenant_does_not_change_a_decision_in_the_other(
        tmp_path: Path) -> None:
    """globex's decision is the same before and after acme's bundle changes."""
    before, _ = await decide_both(bundles(tmp_path / "before", acme_denies_freeze=False))
    after, _ = await decide_both(bundles(tmp_path / "after", acme_denies_freeze=True))
    assert FREEZE in before[ACME].granted_scopes and FREEZE not in after[ACME].granted_scopes
    keep = ("outcome", "granted_scopes", "denied", "matched_rules", "policy_revision",
            "expires_at", "grant_id")
    assert ({k: getattr(before[GLOBEX], k) for k in keep}
            == {k: getattr(after[GLOBEX], k) for k in keep})


async def test_each_tenants_decisions_and_grants_go_to_its_own_topics_only(
        tmp_path: Path) -> None:
    """With topics of their own, acme's decision and grant are on acme's topics (and the
    shared log of record), never on globex's nor on the shared namespace topics; and back."""
    bus = MemoryBus()
    routing = GrantRouting(frozenset({"payments", "crm"}), frozenset({"acme", "globex"}))
    await decide_both(bundles(tmp_path, acme_denies_freeze=False), bus, routing)

    def agents(topic: str) -> set[str]:
        return {getattr(e, "agent_id", "") for e in bus.events(topic)}

    assert agents(topics.DECISIONS.name) == agents(topics.GRANTS.name) == {ACME, GLOBEX}
    for tenant, agent in (("acme", ACME), ("globex", GLOBEX)):
        assert agents(topics.tenant_decisions(tenant).name) == {agent}
        assert agents(topics.tenant_grants(tenant).name) == {agent}
        for ns in ("payments", "crm"):
            assert agents(topics.tenant_grants(tenant, ns).name) == {agent}, (tenant, ns)
    for ns in ("payments", "crm"):
        assert agents(topics.grant_topic(ns).name) == set(), ns
    pii = [e for e in bus.events(topics.tenant_grants("acme", "crm").name)
           if isinstance(e, GrantIssued)]
    assert [g.scopes for g in pii] == [(PII,)]  # the namespace projection, as on shared topics


async def test_once_tenants_are_declared_the_default_tenant_has_topics_of_its_own(
        tmp_path: Path) -> None:
    """The worker's routing gives the default tenant topics of its own when other tenants are
    declared: its agent's decision and grant are on them (and on the log of record, and, its
    namespace projections, on the shared namespace topics, which hold no other tenant's); no
    other tenant's topic carries them. Without declared tenants: no tenant topic."""
    from broker.config import Settings
    from streams.bootstrap import _routing

    tenancy = bundles(tmp_path, acme_denies_freeze=False)
    settings = Settings(grant_namespaces=("payments", "crm"))
    routing = _routing(settings, tenancy)
    assert routing.tenants == {"acme", "globex", topics.DEFAULT_TENANT}
    assert _routing(settings, load_tenancy(FRAUD, None)).tenants == frozenset()
    bus = MemoryBus()
    await decide_both(tenancy, bus, routing, also=("fraud-agent",))

    def agents(topic: str) -> set[str]:
        return {getattr(e, "agent_id", "") for e in bus.events(topic)}

    assert agents(topics.DECISIONS.name) == agents(topics.GRANTS.name) == {
        ACME, GLOBEX, "fraud-agent"}
    assert agents(topics.tenant_decisions("default").name) == {"fraud-agent"}
    assert agents(topics.tenant_grants("default").name) == {"fraud-agent"}
    for ns in ("payments", "crm"):
        assert agents(topics.tenant_grants("default", ns).name) == {"fraud-agent"}, ns
        assert agents(topics.grant_topic(ns).name) == {"fraud-agent"}, ns
        assert agents(topics.tenant_grants("acme", ns).name) == {ACME}, ns


async def test_without_tenant_topics_everything_stays_on_the_shared_topics(
        tmp_path: Path) -> None:
    """A worker whose routing names no tenant writes today's topics only."""
    bus = MemoryBus()
    await decide_both(bundles(tmp_path, acme_denies_freeze=False), bus,
                      GrantRouting(frozenset({"payments"})))
    assert not [t for t in bus.topics if t.startswith(topics.TENANT_TOPIC_PREFIX)]
    assert {e.agent_id for e in bus.events(topics.grant_topic("payments").name)
            if isinstance(e, GrantIssued)} == {ACME, GLOBEX}


def test_an_agents_tenant_is_not_guessed_before_the_registry_is_loaded(tmp_path: Path) -> None:
    """A timer's sweep may publish before the registry is loaded: the topics of its records
    depend on the agent's registered tenant, so it fails (retried) rather than guess."""
    import asyncio
    from types import SimpleNamespace

    import pytest

    from broker.errors import BusError
    from streams.bootstrap import _tenant_of

    tenancy = bundles(tmp_path, acme_denies_freeze=False)
    gate = SimpleNamespace(ready=asyncio.Event(), profile=TenantGate(tenancy).profile)
    tenant_of = _tenant_of(gate, tenancy)  # type: ignore[arg-type]
    with pytest.raises(BusError, match="registry is not loaded"):
        tenant_of(ACME)
    gate.ready.set()
    assert (tenant_of(ACME), tenant_of(GLOBEX)) == ("acme", "globex")


async def test_a_worker_announces_on_a_topic_it_does_not_write_without_that_topics_namespace(
) -> None:
    """On the namespace topics it writes, a worker names the namespaces it routes; on an
    existing one it does not write (an unrouted namespace's, or the topic of a tenant it does
    not route: tenants no longer declared), the same list without that topic's namespace, so a
    view there is unrouted and denies instead of replaying grants whose revocations go
    elsewhere. Every announcement names the tenants with topics of their own (none here);
    nothing goes to the shared log of record."""
    bus = MemoryBus()
    store = MemoryGrantStore(clock=lambda: T0, margin_s=600, view_built_at=T0)
    ctx = WorkerContext(FRAUD, store, bus, margin_s=600,
                        routing=GrantRouting(frozenset({"payments", "crm"})))
    await ctx.announce_routing("w", also=(
        "permbroker.grants.billing", "permbroker.tenant.acme.grants.payments",
        "permbroker.grants.payments", "permbroker.tenant.acme.grants",
        "permbroker.tenant.acme.decisions", topics.GRANTS.name))

    def announced(topic: str) -> list[tuple[str, ...]]:
        return [e.namespaces for e in bus.events(topic) if isinstance(e, RoutingAnnounced)]

    assert announced("permbroker.grants.payments") == [("crm", "payments")]
    assert announced("permbroker.grants.crm") == [("crm", "payments")]
    assert announced("permbroker.grants.billing") == [("crm", "payments")]
    assert announced("permbroker.tenant.acme.grants.payments") == [("crm",)]
    assert announced("permbroker.tenant.acme.grants") == [("crm", "payments")]
    assert announced(topics.GRANTS.name) == []
    assert announced("permbroker.tenant.acme.decisions") == []
    assert {e.tenants for t in bus.topics for e in bus.events(t)
            if isinstance(e, RoutingAnnounced)} == {()}


async def test_with_tenants_a_worker_names_them_on_every_tenants_grant_topic() -> None:
    """With tenants declared, the announcement goes to each tenant's grant topic and namespace
    topics it writes, naming the tenants (the default one too); on the topic of a tenant it no
    longer writes (globex's, left over), the same names: globex is not among them."""
    bus = MemoryBus()
    store = MemoryGrantStore(clock=lambda: T0, margin_s=600, view_built_at=T0)
    routing = GrantRouting(frozenset({"payments"}), frozenset({"acme", topics.DEFAULT_TENANT}))
    ctx = WorkerContext(FRAUD, store, bus, margin_s=600, routing=routing)
    await ctx.announce_routing("w", also=("permbroker.tenant.globex.grants",
                                          "permbroker.tenant.globex.grants.payments"))
    tenants = {t: [e.tenants for e in bus.events(t) if isinstance(e, RoutingAnnounced)]
               for t in bus.topics}
    named = [("acme", "default")]
    assert tenants == {
        "permbroker.grants.payments": named,
        "permbroker.tenant.acme.grants": named,
        "permbroker.tenant.acme.grants.payments": named,
        "permbroker.tenant.default.grants": named,
        "permbroker.tenant.default.grants.payments": named,
        "permbroker.tenant.globex.grants": named,
        "permbroker.tenant.globex.grants.payments": named,
    }
