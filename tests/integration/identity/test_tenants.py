"""Two tenants with the same agent name on the live stack: each decides under its own bundle,
and neither operator nor service of one sees or acts on the other (HTTP API, console, view).

The suite's worker runs with two tenant bundles (acme's refuses the freeze) and an operator of
each (tests/integration/conftest.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.adapters.crypto.keystore import add_operator, new_principal_key
from broker.api.app import create_app
from broker.config import Settings
from broker.errors import CommandRefused
from broker.identity.tenants import qualify
from broker.sdk.operator.client import OperatorClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, ModelInfo
from tests.support.identities import (
    Assertions,
    Registrar,
    agent_auth,
    api_settings,
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
    name = f"fraud-{run_id}"
    ids = {tenant: qualify(tenant, name) for tenant in ("acme", "globex")}
    commands = []
    for tenant, agent in ids.items():
        keys = registrar.store.generate(agent)
        profile = AgentProfile(agent_id=agent, agent_class="fraud-detection", tenant=tenant,
                               owner=f"ops@{tenant}.example", confidence_threshold=0.9,
                               model=ModelInfo(name="gbm", version="1.0", digest="sha256:00"))
        commands.append(registrar.operator.register_command(profile, keys.current.jwk))
    answers = registrar.operator.run_many(commands)
    assert all(a.outcome == "done" for a in answers), answers
    return ids


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


def test_a_tenants_view_never_applies_another_tenants_grant(
    api: TestClient, settings: Settings, twins: dict[str, str],
) -> None:
    """globex's grant is in an unscoped view, never in acme's (nor does acme's view allow it)."""
    escalate(api, settings, twins["globex"])
    service = role_access(settings, topics.SERVICE)
    trust = shared_trust(settings)
    with GrantView(service, trust=trust) as every, \
            GrantView(service, trust=trust, tenant="acme") as acme, \
            GrantView(service, trust=trust, tenant="globex") as globex:
        assert every.wait_ready(30) and acme.wait_ready(30) and globex.wait_ready(30)
        wait_until(lambda: every.allows(twins["globex"], FREEZE, "acct-1").allowed, 30,
                   "globex's grant in the unscoped view")
        wait_until(lambda: globex.allows(twins["globex"], FREEZE, "acct-1").allowed, 30,
                   "globex's grant in globex's view")
        assert not acme.allows(twins["globex"], FREEZE, "acct-1").allowed
        assert acme.active(twins["globex"]) == []


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
