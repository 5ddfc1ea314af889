"""Each tenant's Kafka on the live stack: acme's agent and service users read acme's decisions
and grants, Kafka refuses them globex's, and no record about globex's agent reaches a topic
acme's users may read. The default tenant's users (the plain agent and service) likewise read
the default tenant's own topics, never the shared log of record.

The suite's stack provisions every tenant's users, topics and ACLs (tests/integration/conftest.py)
and the worker decides for acme and globex under their own bundles.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaError, TopicPartition

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import admin_client, cluster_metadata, ensure_topics
from broker.adapters.kafka.bus import consumer
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.errors import BusError
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import Credentials, redis_of, role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import EscalationDecided
from tests.support.audit import cli
from tests.support.identities import Registrar, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
TENANTS = ("acme", "globex")
# What a record about an agent can be that the acceptance names: a decision or a grant event.
DECIDED_OR_GRANTED = frozenset((*topics.DECISIONS.event_types, *topics.GRANT_EVENT_TYPES))


def user(settings: Settings, role: str, tenant: str) -> KafkaAccess:
    """The Kafka user of ``role`` in ``tenant`` (from the stack's credentials)."""
    return role_access(settings, topics.tenant_role(role, tenant))


@pytest.fixture(scope="module")
def twins(registrar: Registrar, run_id: str) -> dict[str, str]:
    """One agent name registered in acme and in globex (by the unscoped operator)."""
    return registrar.twins(f"kafka-{run_id}", TENANTS)


@pytest.fixture(scope="module")
def decided(settings: Settings, twins: dict[str, str]) -> dict[str, EscalationDecided]:
    """Each twin asks for the freeze and the PII read with its tenant's agent user, through
    the agent SDK (which waits on its tenant's decision topic): acme gets the PII read (its
    bundle refuses the freeze), globex both."""
    out = {}
    for tenant, agent in twins.items():
        with AgentClient(agent, user(settings, topics.AGENT, tenant), tenant=tenant,
                         trust=shared_trust(settings),
                         keys=AgentKeyStore.from_settings(settings)) as client:
            out[tenant] = client.request_escalation(
                [FREEZE, PII], duration_s=600, reason="pattern", confidence=0.95,
                risk_score=0.9, resources=["acct-1"], timeout=30)
    assert out["acme"].granted_scopes == (PII,), out["acme"]
    assert set(out["globex"].granted_scopes) == {FREEZE, PII}, out["globex"]
    return out


def refusal(kafka: KafkaAccess, topic: str) -> tuple[int, int | None]:
    """How Kafka answers ``kafka``'s user about ``topic``: the error code of its metadata (0:
    none), and the error a consumer subscribed to it is handed (None: none within 30s); a
    record read fails."""
    c = consumer(kafka)
    try:
        listed = c.list_topics(topic, timeout=10).topics[topic].error
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            assert error is not None, f"{kafka.username} read a record of {topic}"
            if error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                return (listed.code() if listed is not None else 0), error.code()
        return (listed.code() if listed is not None else 0), None
    finally:
        c.close()


def answered(kafka: KafkaAccess, topic: str) -> bool:
    """Whether ``kafka``'s user is given ``topic``'s metadata and offsets."""
    c = consumer(kafka)
    try:
        if c.list_topics(topic, timeout=10).topics[topic].error is not None:
            return False
        c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        return True
    finally:
        c.close()


def allowing(view: GrantView, agent: str) -> Callable[[], bool]:
    """Whether ``view`` allows ``agent`` the PII read now."""
    return lambda: view.allows(agent, PII, "acct-1").allowed


def test_each_tenants_agent_and_service_read_their_own_topics_and_are_refused_the_other(
    settings: Settings, twins: dict[str, str], decided: dict[str, EscalationDecided],
) -> None:
    """acme's agent got its decision from acme's topic (the fixture); acme's service's view
    of acme's topics allows acme's grant; Kafka refuses acme's users (metadata, and a
    subscription: topic authorization failed) every topic of globex's, the shared decision
    and grant topics and the other role's topic of acme; a view on globex's cannot start."""
    trust = shared_trust(settings)
    for tenant in TENANTS:
        view_user = user(settings, topics.SERVICE, tenant)
        with GrantView(view_user, trust=trust, tenant=tenant) as own, \
                GrantView(view_user, trust=trust, tenant=tenant,
                          topic=topics.grant_topic("crm").name) as crm:
            assert own.wait_ready(30) and crm.wait_ready(30), tenant
            for view in (own, crm):
                wait_until(allowing(view, twins[tenant]), 30,
                           f"{tenant}'s grant in its view of {view.topic}")
    acme_agent, acme_service = (user(settings, r, "acme") for r in (topics.AGENT, topics.SERVICE))
    foreign = (topics.tenant_decisions("globex").name, topics.tenant_grants("globex").name,
               topics.tenant_grants("globex", "payments").name, topics.DECISIONS.name,
               topics.GRANTS.name, topics.grant_topic("payments").name)
    refused = (KafkaError.TOPIC_AUTHORIZATION_FAILED,) * 2
    for kafka, topic in [*((k, t) for k in (acme_agent, acme_service) for t in foreign),
                         (acme_service, topics.tenant_decisions("acme").name),
                         (acme_agent, topics.tenant_grants("acme").name)]:
        assert refusal(kafka, topic) == refused, (kafka.username, topic)
    for kafka, topic in ((acme_agent, topics.tenant_decisions("acme").name),
                         (acme_service, topics.tenant_grants("acme").name)):
        assert answered(kafka, topic), (kafka.username, topic)  # its own
    with pytest.raises(BusError, match="not authorized to read"):
        GrantView(acme_service, trust=trust, tenant="globex")


def test_acmes_operator_user_reads_only_acmes_records_and_its_cli_lists_acmes_grants(
    settings: Settings, twins: dict[str, str], decided: dict[str, EscalationDecided],
) -> None:
    """operator@acme, the user a tenant's operator is given: Kafka gives it acme's decision
    and grant topics and the registry, and refuses it globex's and every shared topic that
    carries every tenant's records; Redis lets it read acme's agents' keys, and neither
    another tenant's, nor a write, nor a key listing; the CLI connecting as it lists acme's
    grant and not globex's, and says Kafka refuses it the shared audit."""
    acme, globex = twins["acme"], twins["globex"]
    op = user(settings, topics.OPERATOR, "acme")
    for topic in (topics.tenant_decisions("acme").name, topics.tenant_grants("acme").name,
                  topics.tenant_grants("acme", "crm").name, topics.AGENTS.name):
        assert answered(op, topic), topic
    refused = (KafkaError.TOPIC_AUTHORIZATION_FAILED,) * 2
    for topic in (topics.tenant_decisions("globex").name, topics.tenant_grants("globex").name,
                  topics.DECISIONS.name, topics.GRANTS.name, topics.grant_topic("crm").name,
                  topics.AUDIT.name, topics.ESCALATIONS.name, topics.REVOCATION_ACKS.name):
        assert refusal(op, topic) == refused, topic
    store = redis.Redis.from_url(redis_of(settings.redis_url, op))
    try:
        wait_until(lambda: store.zcard(keys.index(acme)) > 0, 30, "acme's grant index")
        for forbidden in (lambda: store.zcard(keys.index(globex)), lambda: store.scan(0),
                          lambda: store.delete(keys.index(acme))):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
    finally:
        store.close()
    listed = cli(settings, "grants", "list", "--json", role=op.username)
    assert listed.returncode == 0, listed.output
    rows = json.loads(listed.stdout)
    assert decided["acme"].grant_id in {g["grant_id"] for g in rows}
    assert all(g["agent_id"].startswith("acme:") for g in rows), rows
    other = cli(settings, "grants", "list", "--agent", globex, "--json", role=op.username)
    assert other.returncode == 0 and json.loads(other.stdout) == [], other.output
    foreign = cli(settings, "grants", "revoke", decided["globex"].grant_id or "", "--agent",
                  globex, "--reason", "not ours", role=op.username)
    assert foreign.returncode == 1 and "no active grant" in foreign.output, foreign.output
    shared = cli(settings, "audit", "verify", "--topic", topics.AUDIT.name, role=op.username)
    assert shared.returncode == 1, shared.output
    assert f"Kafka user operator@acme is not authorized to read {topics.AUDIT.name}" \
        in shared.output and "tenant's operator user" in shared.output, shared.output


def test_acmes_operator_reads_and_verifies_acmes_copy_of_the_audit(
    settings: Settings, twins: dict[str, str], decided: dict[str, EscalationDecided],
) -> None:
    """The CLI connecting as operator@acme reads acme's copy of the sealed audit: the acme
    twin's decision in full, nothing about the globex twin, nothing about no agent but the
    digests; and the copy verifies as the chain it copies (the entries about anyone else are
    their links, every digest is there in full)."""
    op = topics.tenant_role(topics.OPERATOR, "acme")
    since = (decided["acme"].decided_at - timedelta(seconds=5)).isoformat()

    def rows() -> list[dict[str, object]]:
        ran = cli(settings, "audit", "tail", "--since", since, "--json", role=op)
        assert ran.returncode == 0, ran.output
        return [json.loads(line) for line in ran.stdout.splitlines()]

    wait_until(lambda: any(r["agent_id"] == twins["acme"] and r["kind"] == "escalation.decided"
                           for r in rows()), 30, "acme's decision in acme's audit copy")
    shown = rows()
    assert not [r for r in shown if r["agent_id"] == twins["globex"]]
    assert all(str(r["agent_id"]).startswith("acme:") or r["kind"] == "audit.digest"
               for r in shown), {(r["agent_id"], r["kind"]) for r in shown}
    verified = cli(settings, "audit", "verify", "--json", role=op)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"], verified.output
    assert report["source"] == f"topic {topics.tenant_audit('acme').name}"
    assert sum(int(p["digests"]) for p in report["partitions"]) > 0, report


def test_acmes_operator_user_revokes_an_acme_grant_through_the_cli(
    settings: Settings, registrar: Registrar, run_id: str,
) -> None:
    """The CLI connecting as operator@acme revokes a grant of acme's: it sends the command
    and reads the worker's answer from acme's own decision topic."""
    agent = registrar.twins(f"oprev-{run_id}", ("acme",))["acme"]
    with AgentClient(agent, user(settings, topics.AGENT, "acme"), tenant="acme",
                     trust=shared_trust(settings),
                     keys=AgentKeyStore.from_settings(settings)) as client:
        granted = client.request_escalation(
            [PII], duration_s=600, reason="pattern", confidence=0.95, risk_score=0.9,
            resources=["acct-1"], timeout=30)
    assert granted.grant_id is not None, granted
    revoked = cli(settings, "grants", "revoke", granted.grant_id, "--agent", agent, "--reason",
                  "operator@acme revokes", "--json",
                  role=topics.tenant_role(topics.OPERATOR, "acme"))
    assert revoked.returncode == 0, revoked.output
    listed = cli(settings, "grants", "list", "--agent", agent, "--json",
                 role=topics.tenant_role(topics.OPERATOR, "acme"))
    assert json.loads(listed.stdout) == [], listed.output


def readable_topics(settings: Settings, principals: tuple[str, ...]) -> list[str]:
    """Every topic on the cluster that one of ``principals`` may READ under the stack's ACL
    table (literal rules, and prefixed ones matched against the topics that exist)."""
    table = acls.table(settings.app_id, tenants=TENANTS)
    rules = [a for a in table if a.role in principals and a.resource == acls.TOPIC
             and a.operation == "READ"]
    admin = role_access(settings, topics.ADMIN)
    existing = cluster_metadata(admin_client(admin), 10).topics
    return sorted(t for t in existing if any(
        t == a.name if a.pattern == acls.LITERAL else t.startswith(a.name) for a in rules))


def about(kafka: KafkaAccess, topic: str, agent: str) -> list[str]:
    """The event types of every decision or grant record of ``topic`` keyed by ``agent``, read
    to the end as ``kafka``'s user (raw: whatever the bytes say, nothing trusted or skipped)."""
    c = consumer(kafka)
    found: list[str] = []
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in meta.partitions}
        c.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        todo = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, f"{topic}: {msg.error()}"
            headers = dict(msg.headers() or [])
            raw = headers.get("ce_type")
            kind = raw.decode() if isinstance(raw, bytes) else str(raw or "")
            if msg.key() == agent.encode() and kind in DECIDED_OR_GRANTED:
                found.append(kind)
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            if offset + 1 >= ends[partition]:
                todo.discard(partition)
        assert not todo, f"{topic}: not read to its end within 60s (partitions {todo})"
        return found
    finally:
        c.close()


def test_no_decision_or_grant_of_globex_reaches_a_topic_acmes_users_can_read(
    settings: Settings, twins: dict[str, str], decided: dict[str, EscalationDecided],
) -> None:
    """Every topic acme's agent and service users may read holds acme's decision and grant
    where they belong and not one record deciding or granting anything to globex's agent;
    globex's own topics and the log of record hold globex's (the reads can find them)."""
    admin = role_access(settings, topics.ADMIN)
    principals = tuple(topics.tenant_role(r, "acme") for r in topics.TENANT_ROLES)
    readable = readable_topics(settings, principals)
    assert topics.tenant_decisions("acme").name in readable
    assert topics.tenant_grants("acme").name in readable
    for topic in readable:
        assert about(admin, topic, twins["globex"]) == [], topic
    assert about(admin, topics.tenant_decisions("acme").name, twins["acme"])
    wait_until(lambda: bool(about(admin, topics.tenant_grants("acme").name, twins["acme"])),
               30, "acme's grant on acme's grant topic")
    for topic in (topics.tenant_decisions("globex").name, topics.DECISIONS.name,
                  topics.tenant_grants("globex").name, topics.GRANTS.name):
        assert about(admin, topic, twins["globex"]), topic


def test_the_default_tenants_agent_and_service_read_its_own_topics_never_the_shared_ones(
    settings: Settings, agents: Callable[[str], str], twins: dict[str, str],
    decided: dict[str, EscalationDecided],
) -> None:
    """With tenants declared, the plain agent and service users (the default tenant's) find
    and read the default tenant's own topics: a default agent gets its decision through the
    SDK and a plain service's views allow its grant. Kafka refuses them the shared decision
    and grant topics (every tenant's records) and acme's, and no topic they may read holds a
    record deciding or granting anything to acme's or globex's agent."""
    agent, trust = agents("f"), shared_trust(settings)
    plain_agent, plain_service = (role_access(settings, r) for r in (topics.AGENT, topics.SERVICE))
    with AgentClient(agent, plain_agent, trust=trust,
                     keys=AgentKeyStore.from_settings(settings)) as client:
        granted = client.request_escalation([PII], duration_s=600, reason="pattern",
                                            confidence=0.95, risk_score=0.9,
                                            resources=["acct-1"], timeout=30)
    assert granted.granted_scopes == (PII,), granted
    with GrantView(plain_service, trust=trust) as own, \
            GrantView(plain_service, trust=trust, topic=topics.grant_topic("crm").name) as crm:
        assert own.topic == topics.tenant_grants(topics.DEFAULT_TENANT).name
        assert crm.topic == topics.tenant_grants(topics.DEFAULT_TENANT, "crm").name
        assert own.wait_ready(30) and crm.wait_ready(30)
        for view in (own, crm):
            wait_until(allowing(view, agent), 30, f"the default agent's grant in {view.topic}")
    refused = (KafkaError.TOPIC_AUTHORIZATION_FAILED,) * 2
    for kafka, topic in ((plain_agent, topics.DECISIONS.name),
                         (plain_agent, topics.tenant_decisions("acme").name),
                         (plain_service, topics.GRANTS.name),
                         (plain_service, topics.grant_topic("payments").name),
                         (plain_service, topics.tenant_grants("acme").name)):
        assert refusal(kafka, topic) == refused, (kafka.username, topic)
    admin = role_access(settings, topics.ADMIN)
    readable = readable_topics(settings, (topics.AGENT, topics.SERVICE))
    assert topics.tenant_decisions(topics.DEFAULT_TENANT).name in readable
    for topic in readable:
        for tenant in TENANTS:
            assert about(admin, topic, twins[tenant]) == [], (topic, tenant)
    assert about(admin, topics.tenant_decisions(topics.DEFAULT_TENANT).name, agent)


def test_agents_revoke_waits_for_its_tenants_enforcement_points_only(
    settings: Settings, registrar: Registrar, run_id: str,
) -> None:
    """An acme agent's revocation is awaited from the enforcement points that read acme's
    grants (acme's own view acknowledges it), never from a globex view, which cannot see it."""
    ids = registrar.twins(f"revoked-{run_id}", TENANTS)
    agent, trust = ids["acme"], shared_trust(settings)
    points = {t: ensure_service(settings, f"{t}-view-{run_id}") for t in TENANTS}
    with GrantView(user(settings, topics.SERVICE, "acme"), trust=trust,
                   enforcement_point=points["acme"]) as acme, \
            GrantView(user(settings, topics.SERVICE, "globex"), trust=trust,
                      enforcement_point=points["globex"]) as globex, \
            AgentClient(agent, user(settings, topics.AGENT, "acme"), trust=trust,
                        keys=AgentKeyStore.from_settings(settings)) as client:
        assert acme.wait_ready(30) and globex.wait_ready(30)
        granted = client.request_escalation([PII], duration_s=600, reason="pattern",
                                            confidence=0.95, risk_score=0.9,
                                            resources=["acct-1"], timeout=30)
        assert granted.granted_scopes == (PII,), granted
        wait_until(allowing(acme, agent), 30, "acme's grant at acme's view")
        done = cli(settings, "agents", "revoke", agent, "--reason", "compromised",
                   "--acks-wait", "60", "--json")
        assert done.returncode == 0, done.output
        result = json.loads(done.stdout)
        assert not acme.allows(agent, PII, "acct-1").allowed
    assert result["tenant"] == "acme"
    assert points["acme"].name in result["awaited"], result
    assert points["globex"].name not in result["awaited"], result
    assert points["acme"].name in {a["enforcement_point"] for a in result["acknowledged"]}
    assert points["globex"].name not in {a["enforcement_point"] for a in result["acknowledged"]}


def test_kafka_provision_creates_a_declared_tenants_users_once(
    settings: Settings, tmp_path: Path,
) -> None:
    """On a cluster the stack did not provision for it, ``kafka provision`` (as the super user)
    creates a newly declared tenant's users with passwords it adds to the credentials file,
    its topics and its ACLs: its agent user reads its decision topic and is refused the shared
    one. A second run creates no user and keeps every password."""
    assert settings.kafka_credentials_file is not None
    tenants, credentials = tmp_path / "tenants", tmp_path / "credentials.json"
    assert settings.tenant_policies_dir is not None
    shutil.copytree(settings.tenant_policies_dir / "globex", tenants / "hooli")
    shutil.copy(settings.kafka_credentials_file, credentials)
    env = {"PERMBROKER_TENANT_POLICIES_DIR": str(tenants),
           "PERMBROKER_KAFKA_CREDENTIALS_FILE": str(credentials)}
    first = cli(settings, "kafka", "provision", "--json", role=topics.ADMIN, **env)
    assert first.returncode == 0, first.output
    done = json.loads(first.stdout)
    assert done["tenants"] == ["hooli"]
    assert sorted(done["users_created"]) == ["agent@hooli", "operator@hooli", "service@hooli"], \
        done
    kept = Credentials.read(credentials)
    assert kept is not None and {"agent@hooli", "service@hooli"} <= set(kept.passwords)
    agent = kept.access(KafkaAccess.from_settings(settings), "agent@hooli")
    assert answered(agent, topics.tenant_decisions("hooli").name)
    assert refusal(agent, topics.DECISIONS.name) == (KafkaError.TOPIC_AUTHORIZATION_FAILED,) * 2
    again = cli(settings, "kafka", "provision", "--json", role=topics.ADMIN, **env)
    assert again.returncode == 0, again.output
    assert json.loads(again.stdout)["users_created"] == []
    assert Credentials.read(credentials) == kept


def test_kafka_provision_without_a_credentials_file_names_the_users_and_the_file(
    settings: Settings, tmp_path: Path,
) -> None:
    """Tenants declared, no credentials file to keep their passwords: refused, saying which
    users and which file."""
    assert settings.tenant_policies_dir is not None
    shutil.copytree(settings.tenant_policies_dir / "globex", tmp_path / "tenants" / "hooli")
    missing = tmp_path / "none.json"
    ran = cli(settings, "kafka", "provision", role=topics.ADMIN,
              PERMBROKER_TENANT_POLICIES_DIR=str(tmp_path / "tenants"),
              PERMBROKER_KAFKA_CREDENTIALS_FILE=str(missing))
    assert ran.returncode == 1, ran.output
    assert "agent@hooli, service@hooli" in ran.stderr and str(missing) in ran.stderr


def test_a_view_of_a_tenant_no_worker_writes_denies_and_says_why(
    worker: WorkerProcess, settings: Settings, run_id: str,
) -> None:
    """The worker announces on every tenant's grant topic there is which tenants' topics it
    writes: a view of acme's reads acme among them; a view of the topic of a tenant no longer
    declared (still there; its agents' events go to the shared log of record only) is not
    ready and denies every check, saying why, instead of allowing grants whose revocations it
    would never see."""
    gone = f"gone{run_id}"
    admin = role_access(settings, topics.ADMIN)
    ensure_topics(admin, [topics.tenant_grants(gone)])
    worker.stop()  # the worker announces at start, on every tenant's grant topic there is
    worker.start()
    worker.wait_ready()
    trust = shared_trust(settings)
    with GrantView(user(settings, topics.SERVICE, "acme"), trust=trust) as acme:
        assert acme.topic == topics.tenant_grants("acme").name
        assert acme.wait_ready(30)
        wait_until(lambda: _names(acme, "acme"), 30, "an announcement naming acme")
        wait_until(lambda: acme.freshness().ready, 30, "acme's view ready")
        assert not acme.freshness().unrouted
    with GrantView(admin, trust=trust, tenant=gone) as view:
        assert view.topic == topics.tenant_grants(gone).name
        assert view.wait_ready(30)  # caught up with the topic: the announcement read
        assert view.routing is not None and view.routing.tenants is not None
        assert gone not in view.routing.tenants and "acme" in view.routing.tenants
        reason = f"no worker writes tenant {gone}'s topic {view.topic}"
        state = view.freshness()
        assert not state.ready and reason in state.reason(), state
        verdict = view.allows(f"{gone}:agent", FREEZE)
        assert not verdict.allowed and verdict.unavailable and reason in verdict.reason


def _names(view: GrantView, tenant: str) -> bool:
    """Whether the latest announcement the view read names ``tenant``."""
    return view.routing is not None and tenant in (view.routing.tenants or ())
