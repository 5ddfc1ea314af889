"""HTTP on a real Kafka and Redis: the enforcement helpers over uvicorn, and the permbroker API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.operator.client import revoke
from broker.sdk.resource.enforce import GrantMiddleware, Rule
from broker.sdk.resource.fastapi_deps import require_scope
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import agent_client, api_settings, bearer, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration


def resource_service(view: GrantView) -> FastAPI:
    """A payments service: one route guarded by the dependency, one by the middleware."""
    app = FastAPI()
    app.state.grant_view = view

    may_freeze = Depends(require_scope(FREEZE, resource="{account_id}"))

    @app.post("/accounts/{account_id}/freeze")
    def freeze(account_id: str, verdict: Verdict = may_freeze) -> Any:
        return {"frozen": account_id, "grant_id": verdict.grant.grant_id if verdict.grant else None}

    @app.post("/v2/accounts/{account_id}/freeze")
    def freeze_v2(account_id: str) -> Any:
        return {"frozen": account_id}

    app.add_middleware(GrantMiddleware, view=view, rules=[
        Rule("POST", r"/v2/accounts/(?P<account>[^/]+)/freeze", FREEZE, "{account}")])
    return app


@pytest.fixture
def served(settings: Settings) -> Iterator[tuple[str, GrantView]]:
    """The payments service on uvicorn at a loopback port, with its grant view."""
    view = GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings),
                     topic=topics.GRANTS_PAYMENTS.name)
    assert view.wait_ready(30)
    server = uvicorn.Server(uvicorn.Config(resource_service(view), host="127.0.0.1", port=0,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 15, "uvicorn to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", view
    server.should_exit = True
    thread.join(timeout=10)
    view.close()


def test_dependency_and_middleware_enforce_over_real_http(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    served: tuple[str, GrantView],
) -> None:
    """Allowed with the grant, 403 with the reason otherwise, 403 after the revocation."""
    base, _view = served
    agent = agents("f")
    with agent_client(settings, agent) as client:
        granted = fraud_grant(client)
    me = {"X-Permbroker-Agent": agent, "X-Permbroker-Consistency": granted.consistency_token or ""}
    with httpx.Client(base_url=base, timeout=10) as http:
        for path in ("/accounts/{}/freeze", "/v2/accounts/{}/freeze"):
            anonymous = http.post(path.format("acct-1"))
            assert anonymous.status_code == 403
            assert "no agent identity" in anonymous.headers["x-permbroker-deny-reason"]
            ok = http.post(path.format("acct-1"), headers=me)
            assert ok.status_code == 200 and ok.json()["frozen"] == "acct-1"
            other = http.post(path.format("acct-9"), headers=me)
            assert other.status_code == 403
            assert "no active grant of payments:accounts.freeze on acct-9" in other.text
        rev = revoke(settings, role_access(settings, topics.OPERATOR), agent, "http test",
                     operator="tests", trust=shared_trust(settings))
        after = {"X-Permbroker-Agent": agent,
                 "X-Permbroker-Consistency": rev.consistency_token or ""}
        for path in ("/accounts/acct-1/freeze", "/v2/accounts/acct-1/freeze"):
            denied = http.post(path, headers=after)
            assert denied.status_code == 403, denied.text
            assert "no active grant" in denied.headers["x-permbroker-deny-reason"]


def test_api_escalates_checks_lists_revokes_and_reports(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """The API end to end: escalation as the agent only, check, list, revoke, metrics, status."""
    agent = agents("f")
    with TestClient(create_app(api_settings(settings, agent))) as api:
        assert api.get("/healthz").json() == {"status": "ok"}
        served = api.get("/.well-known/jwks.json").json()["keys"]  # as published on Kafka
        assert served and {k["alg"] for k in served} <= {"EdDSA", "ES256"}
        wait_until(lambda: api.get("/readyz").status_code == 200, 15, "the API to be ready")
        assert "/v1/check" in api.get("/openapi.json").json()["paths"]
        body = {"scopes": [FREEZE], "resources": ["acct-1"], "duration_s": 900,
                "reason": "fraud ring", "confidence": 0.95, "risk_score": 0.93}
        path = f"/v1/agents/{agent}/escalations"
        assert api.post(path, json=body).status_code == 401
        assert api.post(path, json=body, headers=bearer("x")).status_code == 403
        decision = api.post(path, json=body, headers=bearer("agent-secret")).json()
        assert decision["outcome"] == "granted" and decision["consistency_token"]
        check = {"agent_id": agent, "scope": FREEZE, "resource": "acct-1",
                 "consistency_token": decision["consistency_token"]}
        allowed = api.post("/v1/check", json=check, headers=bearer("svc")).json()
        assert allowed["allowed"] and allowed["remaining_s"] > 0, allowed
        grants = api.get(f"/v1/agents/{agent}/grants", headers=bearer("agent-secret")).json()
        assert [g["grant_id"] for g in grants] == [decision["grant_id"]]
        assert api.get(f"/v1/agents/{agent}/grants", headers=bearer("x")).status_code == 403
        revoke_path = f"/v1/operator/agents/{agent}/revoke"
        assert api.post(revoke_path, json={"reason": "r"},
                        headers=bearer("agent-secret")).status_code == 403
        revoked = api.post(revoke_path, json={"reason": "test"}, headers=bearer("op-secret"))
        assert revoked.status_code == 200 and revoked.json()["grant_ids"] == [decision["grant_id"]]
        check["consistency_token"] = revoked.json()["consistency_token"]
        denied = api.post("/v1/check", json=check, headers=bearer("svc")).json()
        assert not denied["allowed"] and "no active grant" in denied["reason"]
        point, cause = f"api-{agent}", revoked.json()["signal_id"]

        def confirmed() -> list[dict[str, Any]]:
            status = api.get("/v1/operator/revocations", headers=bearer("op-secret")).json()
            return [c for p in status["enforcement_points"] if p["name"] == point
                    for c in p["confirmed"] if c["cause_event_id"] == cause]

        wait_until(lambda: bool(confirmed()), 15, "the API's own ack of the revocation")
        assert not confirmed()[0]["replayed"] and confirmed()[0]["propagation_ms"] > 0
        series = f'permbroker_revocation_propagation_seconds_count{{enforcement_point="{point}"}}'
        assert series in api.get("/metrics").text


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
        assert any(c.startswith("redis: Redis at 127.0.0.1:1/0 did not answer")
                   for c in body["causes"]), body
        assert api.get("/healthz").status_code == 200
