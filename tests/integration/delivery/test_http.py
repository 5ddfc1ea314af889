"""HTTP on a real Kafka and Redis: the enforcement helpers over uvicorn, and the permbroker API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from broker.adapters.crypto.assertions import mint
from broker.adapters.kafka.jwks import JwksView
from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.operator.client import revoke
from broker.sdk.resource.enforce import GrantMiddleware, Rule
from broker.sdk.resource.fastapi_deps import require_scope
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import (
    agent_auth,
    agent_client,
    api_settings,
    new_service,
    operator_auth,
    shared_trust,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def resource_service(view: GrantView, verifier: GrantTokenVerifier) -> FastAPI:
    """A payments service: one route guarded by the dependency, one by the middleware; the
    caller is proven by a grant token (the default)."""
    app = FastAPI()
    app.state.grant_view = view
    app.state.grant_verifier = verifier

    may_freeze = Depends(require_scope(FREEZE, resource="{account_id}"))

    @app.post("/accounts/{account_id}/freeze")
    def freeze(account_id: str, verdict: Verdict = may_freeze) -> Any:
        return {"frozen": account_id, "grant_id": verdict.grant.grant_id if verdict.grant else None}

    @app.post("/v2/accounts/{account_id}/freeze")
    def freeze_v2(account_id: str) -> Any:
        return {"frozen": account_id}

    app.add_middleware(GrantMiddleware, view=view, verifier=verifier, rules=[
        Rule("POST", r"/v2/accounts/(?P<account>[^/]+)/freeze", FREEZE, "{account}")])
    return app


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, GrantView]]:
    """The payments service on uvicorn at a loopback port, with its grant view."""
    view = GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings),
                     topic=topics.GRANTS_PAYMENTS.name)
    assert view.wait_ready(30)
    keys = JwksView.from_settings(settings, role_access(settings, topics.SERVICE))
    verifier = GrantTokenVerifier(keys, audience="payments", grants=view)
    server = uvicorn.Server(uvicorn.Config(resource_service(view, verifier), host="127.0.0.1",
                                           port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", view
    server.should_exit = True
    thread.join(timeout=10)
    view.close()
    keys.close()


def test_dependency_and_middleware_enforce_over_real_http(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    served: tuple[str, GrantView],
) -> None:
    """The caller is proven by its grant token: allowed with it, 403 with the reason otherwise
    (the agent header alone proves nothing), 403 once the grant is revoked."""
    base, view = served
    agent = agents("f")
    with agent_client(settings, agent) as client:
        granted = fraud_grant(client)
        assert granted.grant_id is not None
        token = client.grant_token(granted.grant_id, "payments").token
    me = {"Authorization": f"Bearer {token}",
          "X-Permbroker-Consistency": granted.consistency_token or ""}
    with httpx.Client(base_url=base, timeout=10) as http:
        for path in ("/accounts/{}/freeze", "/v2/accounts/{}/freeze"):
            anonymous = http.post(path.format("acct-1"))
            assert anonymous.status_code == 403
            assert "no grant token" in anonymous.headers["x-permbroker-deny-reason"]
            claimed = http.post(path.format("acct-1"), headers={"X-Permbroker-Agent": agent})
            assert claimed.status_code == 403
            assert "no grant token" in claimed.headers["x-permbroker-deny-reason"]
            ok = http.post(path.format("acct-1"), headers=me)
            assert ok.status_code == 200 and ok.json()["frozen"] == "acct-1"
            other = http.post(path.format("acct-9"), headers=me)
            assert other.status_code == 403
            assert "no active grant of payments:accounts.freeze on acct-9" in other.text
        rev = revoke(settings, role_access(settings, topics.OPERATOR), agent, "http test",
                     operator="tests", trust=shared_trust(settings))
        assert not view.allows(agent, FREEZE, "acct-1", at_least=rev.consistency_token).allowed
        for path in ("/accounts/acct-1/freeze", "/v2/accounts/acct-1/freeze"):
            denied = http.post(path, headers=me)
            assert denied.status_code == 403, denied.text
            assert "grant token refused (grant-ended)" in \
                denied.headers["x-permbroker-deny-reason"]


def test_api_escalates_checks_lists_revokes_and_reports(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """The API end to end, each caller proven by its own key: escalation as the agent only,
    check by a service, list, revoke by an operator, metrics, status."""
    agent, someone = agents("f"), agents("f")
    me, other = agent_auth(settings, agent), agent_auth(settings, someone)
    op, svc = operator_auth(settings), new_service(settings, f"payments-{agent}")
    with TestClient(create_app(api_settings(settings, agent))) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        served = api.get("/.well-known/jwks.json").json()["keys"]  # as published on Kafka
        assert served and {k["alg"] for k in served} <= {"EdDSA", "ES256"}
        wait_until(lambda: api.get("/readyz").status_code == 200, 15, "the API to be ready")
        assert "/v1/check" in api.get("/openapi.json").json()["paths"]
        body = {"scopes": [FREEZE], "resources": ["acct-1"], "duration_s": 900,
                "reason": "fraud ring", "confidence": 0.95, "risk_score": 0.93}
        path = f"/v1/agents/{agent}/escalations"
        anonymous = api.post(path, json=body)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert api.post(path, json=body, auth=other).status_code == 403
        assert api.post(path, json=body, auth=op).status_code == 403  # not as the agent
        decision = api.post(path, json=body, auth=me).json()
        assert decision["outcome"] == "granted" and decision["consistency_token"]
        check = {"agent_id": agent, "scope": FREEZE, "resource": "acct-1",
                 "consistency_token": decision["consistency_token"]}
        assert api.post("/v1/check", json=check, auth=me).status_code == 403
        allowed = api.post("/v1/check", json=check, auth=svc).json()
        assert allowed["allowed"] and allowed["remaining_s"] > 0, allowed
        grants = api.get(f"/v1/agents/{agent}/grants", auth=me).json()
        assert [g["grant_id"] for g in grants] == [decision["grant_id"]]
        assert api.get(f"/v1/agents/{agent}/grants", auth=other).status_code == 403
        revoke_path = f"/v1/operator/agents/{agent}/revoke"
        assert api.post(revoke_path, json={"reason": "r"}, auth=me).status_code == 403
        revoked = api.post(revoke_path, json={"reason": "test"}, auth=op)
        assert revoked.status_code == 200 and revoked.json()["grant_ids"] == [decision["grant_id"]]
        check["consistency_token"] = revoked.json()["consistency_token"]
        denied = api.post("/v1/check", json=check, auth=svc).json()
        assert not denied["allowed"] and "no active grant" in denied["reason"]
        point, cause = f"api-{agent}", revoked.json()["signal_id"]

        def confirmed() -> list[dict[str, Any]]:
            status = api.get("/v1/operator/revocations", auth=op).json()
            return [c for p in status["enforcement_points"] if p["name"] == point
                    for c in p["confirmed"] if c["cause_event_id"] == cause]

        wait_until(lambda: bool(confirmed()), 15, "the API's own ack of the revocation")
        assert not confirmed()[0]["replayed"] and confirmed()[0]["propagation_ms"] > 0
        series = f'permbroker_revocation_propagation_seconds_count{{enforcement_point="{point}"}}'
        assert series in api.get("/metrics").text


def test_an_assertion_is_for_one_call_and_acts_once(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """An assertion made for another path is refused; one that made the API act is refused
    the second time (identity:replay); an expired one is refused."""
    agent = agents("f")
    me = agent_auth(settings, agent)
    path = f"/v1/agents/{agent}/escalations"
    body = {"scopes": [FREEZE], "resources": ["acct-1"], "duration_s": 60, "reason": "once",
            "confidence": 0.95}
    with TestClient(create_app(api_settings(settings, agent))) as api:
        elsewhere = {"Authorization": "Bearer " + me.header_value("GET", path)}
        wrong = api.post(path, json=body, headers=elsewhere)
        assert wrong.status_code == 401 and "not POST" in wrong.json()["detail"]
        once = {"Authorization": "Bearer " + me.header_value("POST", path)}
        assert api.post(path, json=body, headers=once).status_code == 200
        again = api.post(path, json=body, headers=once)
        assert again.status_code == 401
        assert again.json()["type"] == "urn:permbroker:problem:identity:replay"
        old = mint(me.key, agent, "POST", path, now=datetime.now(UTC) - timedelta(minutes=10))
        stale = api.post(path, json=body, headers={"Authorization": f"Bearer {old}"})
        assert stale.status_code == 401 and "expired" in stale.json()["detail"]


def test_readyz_reports_the_cause_when_redis_is_down(
    worker: WorkerProcess, settings: Settings,
) -> None:
    """Redis unreachable: /readyz is 503 and names Redis; /healthz stays 200."""
    down = api_settings(settings, "nobody", redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(down)) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert not body["checks"]["redis"]["ok"] and body["checks"]["kafka"]["ok"]
        assert any(c.startswith("redis: Redis at redis://127.0.0.1:1/0 did not answer")
                   for c in body["causes"]), body
        assert api.get("/healthz").status_code == 200
