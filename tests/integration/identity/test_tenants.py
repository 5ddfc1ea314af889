"""Two tenants with the same agent name on the live stack: each decides under its own bundle,
and neither operator nor service of one sees or acts on the other (HTTP API, console, view).

The suite's worker runs with two tenant bundles (acme's refuses the freeze) and an operator of
each (tests/integration/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.adapters.crypto.keystore import add_operator, new_principal_key
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.redis.stats.profiles import ProfileStore
from broker.api.app import create_app
from broker.config import Settings
from broker.errors import CommandRefused
from broker.identity.tenants import qualify
from broker.policy import load_policy
from broker.sdk.operator.client import OperatorClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, ModelInfo
from tests.support.audit import cli
from tests.support.identities import (
    Assertions,
    Registrar,
    agent_auth,
    api_settings,
    new_service,
    shared_trust,
)
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE = "payments:accounts.freeze"
ASK = {"scopes": [FREEZE], "resources": ["acct-1"], "duration_s": 600, "reason": "pattern",
       "confidence": 0.95, "risk_score": 0.9}


@pytest.fixture(scope="module")
def api(worker: object, settings: Settings) -> Iterator[TestClient]:
    """The HTTP API (and console) on the suite's stack."""
    with TestClient(create_app(api_settings(settings, "tenants"))) as client:
        yield client


@pytest.fixture(scope="module")
def twins(registrar: Registrar, run_id: str) -> dict[str, str]:
    """The same agent name registered in acme and in globex (by the unscoped operator)."""
    return registrar.twins(f"fraud-{run_id}", ("acme", "globex"))


def escalate(api: TestClient, settings: Settings, agent: str) -> dict[str, object]:
    answer = api.post(f"/v1/agents/{agent}/escalations", json=ASK,
                      auth=agent_auth(settings, agent))
    assert answer.status_code == 200, answer.text
    decided: dict[str, object] = answer.json()
    return decided


@pytest.fixture(scope="module")
def scoped(settings: Settings, run_id: str, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, tuple[Assertions, Path]]:
    """acme's and globex's operators (scoped by the suite's operator tenants file): a key
    file each, trusted through the operators file."""
    out = {}
    for tenant in ("acme", "globex"):
        principal = f"operator:{tenant}-{run_id}"
        path = tmp_path_factory.mktemp("operators") / f"{tenant}.json"
        key = new_principal_key(path, principal)
        add_operator(settings.key_path("operators"), principal, key.jwk)
        out[tenant] = (Assertions(principal, key), path)
    return out


def operators(scoped: dict[str, tuple[Assertions, Path]]) -> tuple[Assertions, Assertions]:
    return scoped["acme"][0], scoped["globex"][0]


def test_same_name_two_tenants_decided_apart_and_invisible_to_the_other_operator(
    api: TestClient, settings: Settings, twins: dict[str, str],
    scoped: dict[str, tuple[Assertions, Path]],
) -> None:
    """acme's bundle denies the freeze and globex's grants it; acme's operator can neither
    read globex's grants nor revoke its agent over the API, and sees only acme's held rows."""
    acme, globex = escalate(api, settings, twins["acme"]), escalate(api, settings,
                                                                      twins["globex"])
    assert acme["outcome"] == "denied" and globex["outcome"] == "granted", (acme, globex)
    assert {d["rule"] for d in acme["denied"]} == {"acme-no-freeze"}  # type: ignore[attr-defined]
    acme_op, globex_op = operators(scoped)
    theirs = api.get(f"/v1/agents/{twins['globex']}/grants", auth=acme_op)
    assert theirs.status_code == 403, theirs.text
    revoke = api.post(f"/v1/operator/agents/{twins['globex']}/revoke",
                      json={"reason": "not mine"}, auth=acme_op)
    assert revoke.status_code == 403, revoke.text
    stats = api.get(f"/v1/operator/agents/{twins['globex']}/stats", auth=acme_op)
    assert stats.status_code == 403, stats.text
    selector = api.post("/v1/operator/revoke", json={"agent_id": twins["globex"],
                                                     "reason": "x", "dry_run": True},
                        auth=acme_op)
    assert selector.status_code == 403, selector.text
    own = api.get(f"/v1/agents/{twins['globex']}/grants", auth=globex_op)
    assert own.status_code == 200 and [g["tenant"] for g in own.json()] == ["globex"]
    assert api.get(f"/v1/agents/{twins['acme']}/grants", auth=acme_op).status_code == 200
    assert api.get(f"/v1/agents/{twins['acme']}/grants", auth=globex_op).status_code == 403


def test_the_console_shows_an_operator_only_its_tenants_rows(
    api: TestClient, settings: Settings, twins: dict[str, str],
    scoped: dict[str, tuple[Assertions, Path]],
) -> None:
    """Signed in as acme's operator: globex's agent is on no page and its revoke is refused."""
    escalate(api, settings, twins["globex"])
    acme_op, _globex_op = operators(scoped)
    form = api.get("/console/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    signed = api.post("/console/login", follow_redirects=False, data={
        "assertion": acme_op.header_value("POST", "/console/login"), "csrf": token.group(1)})
    assert signed.status_code == 303, signed.text
    for name in ("grants", "agents", "decisions", "approvals"):
        page = api.get(f"/console/{name}")
        assert page.status_code == 200 and twins["globex"] not in page.text, name
    audit = api.get("/console/audit", params={"agent": twins["globex"]})
    assert "not an agent of the tenants you operate" in audit.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', api.get("/console/agents").text)
    assert csrf is not None
    refused = api.post("/console/agents/revoke", data={"agent_id": twins["globex"],
                                                       "csrf": csrf.group(1)})
    assert refused.status_code == 403 and "not an agent of the tenants" in refused.text
    assert twins["acme"] in api.get("/console/agents").text


def test_a_tenants_service_checks_only_its_tenants_agents(
    api: TestClient, settings: Settings, twins: dict[str, str], run_id: str,
) -> None:
    """acme's resource service (scoped by the tenants file) gets acme's agent's answer and a
    403 for globex's granted twin; an unscoped service answers for both."""
    granted = escalate(api, settings, twins["globex"])
    assert granted["outcome"] == "granted", granted
    acme_service, anyone = new_service(settings, f"acme-{run_id}"), new_service(
        settings, f"any-{run_id}")
    theirs = {"agent_id": twins["globex"], "scope": FREEZE, "resource": "acct-1",
              "consistency_token": granted["consistency_token"]}
    refused = api.post("/v1/check", json=theirs, auth=acme_service)
    assert refused.status_code == 403, refused.text
    assert "not an agent of the tenants" in refused.json()["detail"]
    assert "allowed" not in refused.json()
    unscoped = api.post("/v1/check", json=theirs, auth=anyone)
    assert unscoped.status_code == 200 and unscoped.json()["allowed"], unscoped.text
    own = {"agent_id": twins["acme"], "scope": FREEZE, "resource": "acct-1"}
    mine = api.post("/v1/check", json=own, auth=acme_service)
    assert mine.status_code == 200 and mine.json()["allowed"] is False, mine.text
    unregistered = {**own, "agent_id": f"acme:nobody-{run_id}"}
    assert api.post("/v1/check", json=unregistered, auth=acme_service).status_code == 403


def test_a_tenants_view_never_applies_another_tenants_grant(
    api: TestClient, settings: Settings, twins: dict[str, str],
) -> None:
    """globex's grant is in an unscoped view (the broker's API role, on the log of record),
    never in acme's nor in the default tenant's (nor do their views allow it); each tenant's
    view reads its own tenant's topic with its tenant's service user, the plain service user's
    the default tenant's."""
    escalate(api, settings, twins["globex"])

    def own(tenant: str) -> KafkaAccess:
        return role_access(settings, topics.tenant_role(topics.SERVICE, tenant))

    trust = shared_trust(settings)
    with GrantView(role_access(settings, topics.API), trust=trust) as every, \
            GrantView(own("acme"), trust=trust, tenant="acme") as acme, \
            GrantView(own("globex"), trust=trust, tenant="globex") as globex, \
            GrantView(own(topics.DEFAULT_TENANT), trust=trust) as default:
        views = (every, acme, globex, default)
        assert all(v.wait_ready(30) for v in views)
        assert [v.topic for v in views] == [topics.GRANTS.name, *(
            topics.tenant_grants(t).name for t in ("acme", "globex", topics.DEFAULT_TENANT))]
        wait_until(lambda: every.allows(twins["globex"], FREEZE, "acct-1").allowed, 30,
                   "globex's grant in the unscoped view")
        wait_until(lambda: globex.allows(twins["globex"], FREEZE, "acct-1").allowed, 30,
                   "globex's grant in globex's view")
        for other in (acme, default):
            assert not other.allows(twins["globex"], FREEZE, "acct-1").allowed
            assert other.active(twins["globex"]) == []


def test_the_worker_refuses_and_audits_an_operator_acting_on_another_tenant_over_kafka(
    settings: Settings, twins: dict[str, str], scoped: dict[str, tuple[Assertions, Path]],
    tap: TapFactory,
) -> None:
    """Straight to Kafka, past the API: acme's operator cannot suspend globex's agent (refused
    at the source, audited as identity:not-permitted) and can suspend acme's own."""
    audit = tap(topics.AUDIT_RAW.name)
    acme_settings = settings.model_copy(update={"operator_key_file": scoped["acme"][1]})
    client = OperatorClient(acme_settings, role_access(settings, topics.OPERATOR),
                            trust=shared_trust(settings))
    try:
        with pytest.raises(CommandRefused) as info:
            client.suspend(twins["globex"], reason="not mine")
        assert info.value.rule == "identity:not-permitted", info.value
        audit.wait_for(AuditRecord, lambda r: r.kind == "identity.rejected"
                       and r.agent_id == twins["globex"]
                       and "identity:not-permitted" in r.rules)
        assert client.suspend(twins["acme"], reason="acme's own").outcome == "done"
    finally:
        client.close()


def register(registrar: Registrar, tenant: str, name: str) -> str:
    """``name`` registered in ``tenant`` (fraud-detection, from its bundle); its qualified id."""
    agent = qualify(tenant, name)
    keys = registrar.store.generate(agent)
    profile = AgentProfile(agent_id=agent, agent_class="fraud-detection", tenant=tenant,
                           owner=f"ops@{tenant}.example", confidence_threshold=0.9,
                           model=ModelInfo(name="gbm", version="1.0", digest="sha256:00"))
    answer = registrar.operator.run_many([registrar.operator.register_command(
        profile, keys.current.jwk)])
    assert [a.outcome for a in answer] == ["done"], answer
    return agent


def as_operator(settings: Settings, scoped: dict[str, tuple[Assertions, Path]],
                tenant: str) -> Settings:
    """The suite's settings with ``tenant``'s operator key: the CLI then reads as that operator."""
    return settings.model_copy(update={"operator_key_file": scoped[tenant][1]})


def test_the_cli_shows_an_operator_only_its_tenants_agents_grants_and_audit(
    api: TestClient, settings: Settings, twins: dict[str, str],
    scoped: dict[str, tuple[Assertions, Path]],
) -> None:
    """acme's operator's grants, agents, inventory and audit reads hold nothing of globex's
    agent of the same name (globex's operator's do), and a read naming it is refused."""
    escalate(api, settings, twins["acme"])
    escalate(api, settings, twins["globex"])
    acme, globex = as_operator(settings, scoped, "acme"), as_operator(settings, scoped, "globex")
    reads = (("grants", "list", "--json"), ("agents", "list", "--json"),
             ("inventory", "--json"))
    for read in reads:
        mine, theirs = cli(acme, *read), cli(globex, *read)
        assert mine.returncode == 0 and theirs.returncode == 0, (mine, theirs)
        assert twins["globex"] not in mine.stdout and twins["globex"] in theirs.stdout, read
        assert twins["acme"] not in theirs.stdout, read
    assert twins["acme"] in cli(acme, "agents", "list", "--json").stdout

    def tail(who: Settings) -> str:
        return cli(who, "audit", "tail", "--since", "15m ago", "--json").stdout

    wait_until(lambda: twins["globex"] in tail(globex) and twins["acme"] in tail(acme), 60,
               "each twin's decision sealed in the audit")
    assert twins["globex"] not in tail(acme) and twins["acme"] not in tail(globex)
    for refused in (("agents", "show", twins["globex"]),
                    ("audit", "timeline", "--agent", twins["globex"]),
                    ("agents", "stats", twins["globex"])):
        ran = cli(acme, *refused)
        assert ran.returncode == 1 and "not a registered agent of theirs" in ran.stderr, ran


def test_a_tenants_audit_export_holds_its_records_in_full_and_verifies_as_a_cut(
    api: TestClient, settings: Settings, twins: dict[str, str],
    scoped: dict[str, tuple[Assertions, Path]], tmp_path: Path,
) -> None:
    """acme's operator's export (and the unscoped one's --tenant acme) shows acme's records
    and withholds globex's as chain links; each verifies with nothing dropped."""
    escalate(api, settings, twins["acme"])
    escalate(api, settings, twins["globex"])
    acme = as_operator(settings, scoped, "acme")
    exports = {"scoped": (acme, ()), "unscoped": (settings, ("--tenant", "acme"))}
    for name, (who, extra) in exports.items():
        path = tmp_path / f"{name}.jsonl"

        def exported(who: Settings = who, extra: tuple[str, ...] = extra,
                     path: Path = path) -> bool:
            ran = cli(who, "audit", "export", "--since", "15m ago", "--output", str(path),
                      *extra)
            assert ran.returncode == 0, ran
            return twins["acme"] in path.read_text()

        wait_until(exported, 60, f"acme's decision in the {name} export")
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        withheld = [row for row in lines if row["entry"].get("withheld")]
        assert withheld and twins["globex"] not in path.read_text(), name
        assert all(set(row["entry"]) == {"withheld", "chain"} for row in withheld)
        verified = cli(settings, "audit", "verify", "--file", str(path), "--json")
        assert verified.returncode == 0, verified
        assert json.loads(verified.stdout)["ok"] is True
    whole = tmp_path / "whole.jsonl"
    assert cli(settings, "audit", "export", "--since", "15m ago", "--output",
               str(whole)).returncode == 0
    assert twins["globex"] in whole.read_text()  # the unscoped export holds both tenants
    refused = cli(acme, "audit", "export", "--tenant", "globex")
    assert refused.returncode == 1 and "does not operate tenant globex" in refused.stderr


def test_a_tenants_quotas_deny_its_agents_only_naming_the_quota(
    api: TestClient, settings: Settings, registrar: Registrar, twins: dict[str, str],
    run_id: str,
) -> None:
    """initech's third escalation in the hour is denied by quota:escalations; umbrella's second
    grant by quota:active-grants; globex's agent is granted all the while."""
    first, second = (register(registrar, "initech", f"fraud-{n}-{run_id}") for n in (1, 2))
    decided = [escalate(api, settings, agent) for agent in (first, second, first)]
    assert [d["outcome"] for d in decided] == ["granted", "granted", "denied"], decided
    denied = decided[2]["denied"]
    assert {d["rule"] for d in denied} == {"quota:escalations"}  # type: ignore[attr-defined]
    assert "initech" in str(denied)
    holder, other = (register(registrar, "umbrella", f"fraud-{n}-{run_id}") for n in (1, 2))
    held, refused = escalate(api, settings, holder), escalate(api, settings, other)
    assert held["outcome"] == "granted" and refused["outcome"] == "denied", (held, refused)
    assert {d["rule"] for d in refused["denied"]} == {  # type: ignore[attr-defined]
        "quota:active-grants"}
    assert escalate(api, settings, twins["globex"])["outcome"] == "granted"


def test_class_statistics_are_a_tenants_own_and_its_operator_reads_only_its_tenants(
    api: TestClient, settings: Settings, scoped: dict[str, tuple[Assertions, Path]],
    run_id: str,
) -> None:
    """A request counted for acme's agents of a class is in acme's class statistics only;
    acme's operator reads acme's (its one tenant, by default) over the API and the CLI, and is
    refused globex's; globex's operator reads globex's, where it is not."""
    klass, detectors = f"stats-{run_id}", load_policy(settings.policy_path).detectors
    assert detectors is not None
    now = int(time.time() * 1000)
    bucket = now - now % (detectors.bucket_s * 1000)

    async def count() -> None:
        store = ProfileStore.from_url(settings.redis_url)
        try:
            await store.count_group(klass, "1.0", bucket, True, bucket + 3_600_000, "acme")
        finally:
            await store.close()

    asyncio.run(count())
    acme_op, globex_op = operators(scoped)
    path = f"/v1/operator/classes/{klass}/models/1.0/stats"
    for who, tenant, requests in ((acme_op, "acme", 1), (globex_op, "globex", 0)):
        answer = api.get(path, auth=who)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tenant"] == tenant
        assert max(w["requests"] for w in answer.json()["windows"]) == requests, tenant
    refused = api.get(path, params={"tenant": "acme"}, auth=globex_op)
    assert refused.status_code == 403 and "not acme" in refused.text, refused.text
    acme = as_operator(settings, scoped, "acme")
    mine = cli(acme, "agents", "class-stats", klass, "--model", "1.0", "--json")
    assert mine.returncode == 0, mine.output
    assert json.loads(mine.stdout)["tenant"] == "acme"
    assert max(w["requests"] for w in json.loads(mine.stdout)["windows"]) == 1
    theirs = cli(acme, "agents", "class-stats", klass, "--model", "1.0", "--tenant", "globex")
    assert theirs.returncode == 1 and "not globex" in theirs.stderr, theirs.output
