"""Each tenant's Kafka: its topics, its principals, and ACLs that let them read only its own.

Pure: the topic registry, the ACL table derived from it, the credentials of a stack and the
grant routing. The live refusals are tests/integration/identity/test_tenant_topics.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.delivery.routing import GrantRouting
from broker.stack.credentials import Credentials
from broker.stack.tenants import declared
from schemas import topics
from schemas.events import AgentRevoked, GrantIssued

APP = "permbroker"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def reads(role: str, table: list[acls.Acl]) -> list[acls.Acl]:
    return [a for a in table if a.role == role and a.resource == acls.TOPIC
            and a.operation == "READ"]


def readable(role: str, table: list[acls.Acl], topic: str) -> bool:
    """Whether ``role`` may read ``topic`` under ``table`` (literal or prefixed rules)."""
    return any(a.name == topic if a.pattern == acls.LITERAL else topic.startswith(a.name)
               for a in reads(role, table))


def test_tenant_topics_and_principals_are_named_apart_and_found_by_name() -> None:
    """acme's topics sit under its own prefix, the default tenant's under its own."""
    assert topics.tenant_decisions("acme").name == "permbroker.tenant.acme.decisions"
    assert topics.for_tenant(topics.GRANTS.name, "acme") == "permbroker.tenant.acme.grants"
    assert topics.for_tenant("permbroker.grants.payments", "acme") == \
        "permbroker.tenant.acme.grants.payments"
    assert topics.for_tenant(topics.AGENTS.name, "acme") == topics.AGENTS.name
    for name in (topics.DECISIONS.name, topics.GRANTS.name, "permbroker.grants.crm"):
        assert topics.for_tenant(name, topics.DEFAULT_TENANT) == \
            "permbroker.tenant.default." + name.removeprefix("permbroker.")
    for name in ("permbroker.tenant.acme.decisions", "permbroker.tenant.acme.grants",
                 "permbroker.tenant.acme.grants.crm"):
        assert topics.by_name(name).name == name
    assert topics.tenant_role(topics.AGENT, "acme") == "agent@acme"
    assert topics.role_of("service@acme") == (topics.SERVICE, "acme")
    assert topics.tenant_role(topics.AGENT, topics.DEFAULT_TENANT) == topics.AGENT
    assert topics.tenant_role(topics.OPERATOR, "acme") == "operator@acme"
    assert topics.audit_for("operator@acme").name == "permbroker.tenant.acme.audit"
    assert topics.audit_for(topics.OPERATOR) == topics.audit_for("agent@acme") == topics.AUDIT
    assert [t.name for t in topics.tenant_topics("acme")][-1] == "permbroker.tenant.acme.audit"
    assert "permbroker.tenant.default.audit" not in {
        t.name for t in topics.tenant_topics(topics.DEFAULT_TENANT)}
    assert topics.by_name("permbroker.tenant.acme.audit").readers == ("operator@acme",)
    assert topics.tenant_role(topics.OPERATOR, topics.DEFAULT_TENANT) == topics.OPERATOR
    with pytest.raises(ValueError):
        topics.tenant_role(topics.WORKER, "acme")


def test_namespace_grant_topics_are_told_from_the_others_shared_or_a_tenants() -> None:
    """Namespace grant topics: the shared ones and each tenant's (the default tenant's too)."""
    namespaces = {"permbroker.grants.payments": "payments",
                  "permbroker.tenant.acme.grants.crm": "crm",
                  "permbroker.tenant.default.grants.payments": "payments"}
    for name, namespace in namespaces.items():
        assert topics.namespace_of_topic(name) == namespace, name
    for name in (topics.GRANTS.name, topics.DECISIONS.name, "permbroker.grants.",
                 "permbroker.tenant.acme.grants", "permbroker.tenant.acme.decisions",
                 "permbroker.tenant.acme.grants.", "permbroker.agents"):
        assert topics.namespace_of_topic(name) is None, name


def test_routing_announcements_go_to_namespace_topics_and_tenants_grant_topics_only() -> None:
    """The topics a worker announces its routing on: every namespace grant topic and each
    tenant's grant topic (the default tenant's too); never the shared log of record, a
    decision topic or another topic; and whose tenant's own topic a topic is."""
    for name in ("permbroker.grants.payments", "permbroker.tenant.acme.grants.crm",
                 "permbroker.tenant.acme.grants", "permbroker.tenant.default.grants"):
        assert topics.carries_routing(name), name
    for name in (topics.GRANTS.name, topics.DECISIONS.name, "permbroker.tenant.acme.decisions",
                 "permbroker.agents", "elsewhere"):
        assert not topics.carries_routing(name), name
    assert topics.tenant_of_topic("permbroker.tenant.acme.grants.crm") == "acme"
    assert topics.tenant_of_topic("permbroker.tenant.default.decisions") == "default"
    assert topics.tenant_of_topic(topics.GRANTS.name) is None
    assert topics.tenant_of_topic("permbroker.tenant.") is None


def test_a_tenants_topics_carry_only_its_agents_and_the_shared_ones_every_tenants() -> None:
    """Whose revocations an enforcement point can see, from the topic it reads: a view of
    acme's topics only acme's (not globex's, not the default tenant's), a view of a shared
    topic (the log of record) every tenant's."""
    for name in ("permbroker.tenant.acme.grants", "permbroker.tenant.acme.grants.crm"):
        assert topics.carries_tenant(name, "acme")
        assert not topics.carries_tenant(name, "globex")
        assert not topics.carries_tenant(name, topics.DEFAULT_TENANT)
    assert not topics.carries_tenant("permbroker.tenant.acmecorp.grants", "acme")
    for name in (topics.GRANTS.name, "permbroker.grants.payments"):
        for tenant in ("acme", "globex", topics.DEFAULT_TENANT):
            assert topics.carries_tenant(name, tenant)


def test_a_tenants_principals_read_only_their_tenants_decisions_and_grants() -> None:
    """acme's agent reads acme's decisions, acme's service acme's grant topics (every
    namespace's); neither reads globex's, nor the shared decision and grant topics."""
    table = acls.table(APP, tenants=("acme", "globex"))
    agent, service = "agent@acme", "service@acme"
    assert readable(agent, table, "permbroker.tenant.acme.decisions")
    assert readable(service, table, "permbroker.tenant.acme.grants")
    assert readable(service, table, "permbroker.tenant.acme.grants.payments")
    foreign = ["permbroker.tenant.globex.decisions", "permbroker.tenant.globex.grants",
               "permbroker.tenant.globex.grants.payments", topics.DECISIONS.name,
               topics.GRANTS.name, "permbroker.grants.payments", topics.AUDIT.name,
               topics.AUDIT_RAW.name, topics.ESCALATIONS.name]
    for principal in (agent, service):
        assert not [t for t in foreign if readable(principal, table, t)], principal
    # Otherwise as their role: acme's agents still ask, acme's services still acknowledge.
    assert acls.Acl(agent, acls.TOPIC, topics.ESCALATIONS.name, acls.LITERAL, "WRITE") in table
    assert acls.Acl(service, acls.TOPIC, topics.REVOCATION_ACKS.name, acls.LITERAL,
                    "WRITE") in table
    assert acls.Acl(agent, acls.GROUP, "pb-agent@acme-", acls.PREFIXED, "READ") in table
    assert acls.Acl(topics.WORKER, acls.TOPIC, topics.TENANT_TOPIC_PREFIX, acls.PREFIXED,
                    "WRITE") in table


def test_a_tenants_operator_reads_only_its_tenants_topics_and_writes_the_commands() -> None:
    """operator@acme reads acme's own topics (every one, present and future), the registry and
    the key sets; none of globex's, nor a shared topic that carries every tenant's records; it
    writes what an operator sends, nothing else. The default tenant has no such user (its
    operator is the broker's)."""
    table = acls.table(APP, tenants=("acme", "globex"))
    who = "operator@acme"
    for topic in ("permbroker.tenant.acme.decisions", "permbroker.tenant.acme.grants",
                  "permbroker.tenant.acme.grants.crm", "permbroker.tenant.acme.audit",
                  topics.AGENTS.name, topics.JWKS.name):
        assert readable(who, table, topic), topic
    shared = [t.name for t in topics.ALL_TOPICS if t not in (topics.AGENTS, topics.JWKS)]
    foreign = ["permbroker.tenant.globex.decisions", "permbroker.tenant.globex.grants",
               "permbroker.tenant.globex.audit", "permbroker.tenant.default.grants",
               "permbroker.tenant.acmex.grants"]
    assert not [t for t in shared + foreign if readable(who, table, t)]
    writes = {a.name for a in table if a.role == who and a.operation == "WRITE"}
    assert writes == {topics.RISK.name, topics.REGISTRY.name, topics.GRANT_COMMANDS.name,
                      topics.APPROVALS.name}
    assert {a.operation for a in table if a.role == who} == {"READ", "WRITE"}
    assert acls.Acl(who, acls.GROUP, "pb-operator@acme-", acls.PREFIXED, "READ") in table
    assert not [a for a in table if a.role == "operator@default"]


def test_with_tenants_the_default_tenants_roles_read_its_own_topics_not_the_shared_ones() -> None:
    """Once tenants are declared the shared decision and grant topics carry every tenant's
    records: the plain agent and service roles (the default tenant's principals) read the
    default tenant's own topics instead, and only the broker's roles read the shared ones.
    What a stack without tenants had is withdrawn, and only that."""
    table = acls.table(APP, tenants=("acme", "globex"))
    assert readable(topics.AGENT, table, "permbroker.tenant.default.decisions")
    assert readable(topics.SERVICE, table, "permbroker.tenant.default.grants")
    assert readable(topics.SERVICE, table, "permbroker.tenant.default.grants.payments")
    shared = [topics.DECISIONS.name, topics.GRANTS.name, "permbroker.grants.payments"]
    foreign = ["permbroker.tenant.acme.decisions", "permbroker.tenant.acme.grants",
               "permbroker.tenant.acme.grants.payments"]
    for role in (topics.AGENT, topics.SERVICE):
        assert not [t for t in shared + foreign if readable(role, table, t)], role
    for role in (topics.WORKER, topics.OPERATOR, topics.API):
        assert readable(role, table, topics.GRANTS.name), role
    assert readable(topics.OPERATOR, table, topics.DECISIONS.name)
    assert [str(a) for a in acls.withdrawn(APP, ("acme", "globex"))] == [
        "User:agent READ TOPIC permbroker.decisions", "User:service READ TOPIC permbroker.grants",
        "User:service READ TOPIC permbroker.grants.*"]
    single = set(acls.table(APP))
    # Back to one tenant: the default tenant's roles lose its own topics (their clients read
    # the shared ones again), and nothing else.
    back = acls.withdrawn(APP, ())
    assert {(a.role, a.name) for a in back if a.operation == "READ"} == {
        (topics.AGENT, "permbroker.tenant.default.decisions"),
        (topics.SERVICE, "permbroker.tenant.default.grants"),
        (topics.OPERATOR, "permbroker.tenant.default.decisions"),
        (topics.OPERATOR, "permbroker.tenant.default.grants")}
    assert not set(back) & single
    # Otherwise the default tenant's roles keep every rule they had.
    assert single - set(table) == set(acls.withdrawn(APP, ("acme", "globex")))


def test_without_tenants_the_table_names_no_tenant_principal() -> None:
    """A single-tenant stack: no tenant user, no tenant topic read."""
    table = acls.table(APP)
    assert not [a for a in table if "@" in a.role]
    assert not [a for a in table if a.operation == "READ"
                and a.name.startswith(topics.TENANT_TOPIC_PREFIX)]


def test_tenant_users_get_passwords_once_and_are_created_with_the_roles() -> None:
    """A tenant's users are added beside the roles' (existing passwords kept)."""
    base = Credentials.generate()
    more = base.with_tenants(("acme", "default"))
    assert set(more.passwords) - set(base.passwords) == {"agent@acme", "service@acme",
                                                         "operator@acme"}
    assert all(more.passwords[u] == p for u, p in base.passwords.items())
    assert more.with_tenants(("acme",)).passwords == more.passwords
    assert {"agent@acme", "service@acme", "operator@acme"} <= set(more.users())
    assert more.access(KafkaAccess("127.0.0.1:1"), "agent@acme").username == "agent@acme"


def test_the_declared_tenants_are_the_bundle_directories(tmp_path: Path) -> None:
    """Subdirectories named by a tenant id; nothing without a directory."""
    for name in ("acme", "globex", "Not A Tenant"):
        (tmp_path / name).mkdir()
    (tmp_path / "README").write_text("x")
    assert declared(tmp_path) == ("acme", "globex")
    assert declared(None) == ()


def test_a_tenants_grant_events_go_to_the_log_of_record_and_its_own_topics() -> None:
    """A tenant's never go to the shared namespace topics. With tenants declared the default
    tenant's go to its own topics, and to the shared ones as before (which then hold its
    projections only, whole should the tenants go); without, to the shared ones."""
    routing = GrantRouting(frozenset({"payments", "crm"}),
                           frozenset({"acme", topics.DEFAULT_TENANT}))
    grant = GrantIssued(grant_id="g-1", agent_id="acme:a", request_id="r-1",
                        scopes=("payments:accounts.freeze", "crm:customer.read"),
                        resources=("acct-1",), issued_at=NOW,
                        expires_at=NOW + timedelta(seconds=20), policy_revision="sha256:ab",
                        rules=("x",), tenant="acme")
    assert [t for t, _e in routing.route(grant, tenant="acme")] == [
        topics.GRANTS.name, "permbroker.tenant.acme.grants",
        "permbroker.tenant.acme.grants.crm", "permbroker.tenant.acme.grants.payments"]
    assert [t for t, _e in routing.route(grant)] == [
        topics.GRANTS.name, "permbroker.grants.crm", "permbroker.grants.payments",
        "permbroker.tenant.default.grants", "permbroker.tenant.default.grants.crm",
        "permbroker.tenant.default.grants.payments"]
    alone = GrantRouting(frozenset({"payments", "crm"}))
    assert [t for t, _e in alone.route(grant)] == [
        topics.GRANTS.name, "permbroker.grants.crm", "permbroker.grants.payments"]
    revoked = AgentRevoked(agent_id="acme:a", revoked_at=NOW, reason="r", rule="x",
                           cause_event_id="sig-1", markers_until=NOW)
    assert {t for t, _e in routing.route(revoked, tenant="acme")} >= {
        "permbroker.tenant.acme.grants.crm", "permbroker.tenant.acme.grants.payments"}
    assert "permbroker.tenant.acme.grants.crm" in routing.topics()
