"""The live API against its own OpenAPI document (schemathesis), and its limits (413, 429).

Every operation, with valid credentials and without, on a uvicorn server over the suite's
Kafka, Redis and worker: no server error, no response outside the documented schema, no
undocumented status code, no undocumented media type. The examples per operation are bounded
(the coverage phase's boundary cases plus a few generated ones) so the run takes about a minute.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.api.app import create_app
from broker.config import Settings
from tests.support.identities import (
    Assertions,
    agent_auth,
    api_settings,
    new_service,
    operator_auth,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]
# The document does not depend on the settings: read it from an app that is never started.
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
SCHEMA.config.generation.update(max_examples=6, deterministic=True, database="none")
SCHEMA.config.phases.update(phases=["coverage", "fuzzing"])


@dataclass(frozen=True)
class LiveApi:
    """The served API and a caller of each kind."""

    url: str
    agent: str
    agent_auth: Assertions
    operator: Assertions
    service: Assertions

    def auth_for(self, path: str) -> Assertions | None:
        """Who may call an operation (by its path template): its own kind of principal."""
        if path.startswith("/v1/agents/"):
            return self.agent_auth
        if path.startswith("/v1/operator/"):
            return self.operator
        return self.service if path == "/v1/check" else None


class Signed(requests.auth.AuthBase):
    """requests' side of ``Assertions``: an assertion for each request's method and path."""

    def __init__(self, assertions: Assertions) -> None:
        self.assertions = assertions

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        path = urllib.parse.unquote(urllib.parse.urlsplit(r.url or "").path)
        r.headers["Authorization"] = "Bearer " + self.assertions.header_value(
            r.method or "GET", path)
        return r


@pytest.fixture(scope="module")
def live_api(worker: object, settings: Settings,
             agents: Callable[[str], str]) -> Iterator[LiveApi]:
    """The API on uvicorn at a loopback port (rate limits out of the way of the fuzzing)."""
    agent = agents("f")
    app = create_app(api_settings(settings, "contract", api_rate_limit=100_000,
                                  decision_timeout_s=10.0))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "uvicorn to start")
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 30,
               "the API to be ready")
    yield LiveApi(url, agent, agent_auth(settings, agent), operator_auth(settings),
                  new_service(settings, "contract"))
    server.should_exit = True
    thread.join(timeout=15)


@SCHEMA.parametrize()
def test_every_operation_with_valid_credentials(case: schemathesis.Case,
                                                live_api: LiveApi) -> None:
    """Signed by the principal the operation is for (agent routes: the test agent itself)."""
    auth = live_api.auth_for(case.operation.path)
    if "agent_id" in (case.path_parameters or {}) and auth is live_api.agent_auth:
        case.path_parameters = {**(case.path_parameters or {}), "agent_id": live_api.agent}
    session = requests.Session()
    if auth is not None:
        session.auth = Signed(auth)
    case.call_and_validate(base_url=live_api.url, session=session, checks=CHECKS)


@SCHEMA.parametrize()
def test_every_operation_without_credentials(case: schemathesis.Case,
                                             live_api: LiveApi) -> None:
    """Anonymous: every protected operation answers its documented 401 problem."""
    case.call_and_validate(base_url=live_api.url, checks=CHECKS)


def test_a_10_mb_body_is_refused_with_413(worker: object, settings: Settings) -> None:
    """A 10 MB body gets 413 (a problem), before anything reads or echoes it."""
    with TestClient(create_app(api_settings(settings, "limits"))) as api:
        big = api.post("/v1/check", content=b"{" + b" " * (10 * 1024 * 1024) + b"}",
                       headers={"content-type": "application/json"})
        assert big.status_code == 413
        assert big.headers["content-type"] == "application/problem+json"
        assert big.json()["type"] == "urn:permbroker:problem:body-too-large"
        assert len(big.content) < 1024


def test_a_burst_over_the_rate_limit_gets_429_while_others_are_served(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """One service bursting over its limit gets 429 with Retry-After; another service, and an
    agent, are still served."""
    agent = agents("f")
    busy, calm = new_service(settings, "busy"), new_service(settings, "calm")
    check = {"agent_id": agent, "scope": "payments:accounts.freeze", "resource": "acct-1"}
    limited = api_settings(settings, "limits", api_rate_limit=5, api_rate_window_s=60)
    with TestClient(create_app(limited)) as api:
        answers = [api.post("/v1/check", json=check, auth=busy) for _ in range(8)]
        assert [a.status_code for a in answers[:5]] == [200] * 5
        over = answers[5:]
        assert {a.status_code for a in over} == {429}
        assert all(1 <= int(a.headers["retry-after"]) <= 60 for a in over)
        assert over[0].json()["type"] == "urn:permbroker:problem:rate-limited"
        assert api.post("/v1/check", json=check, auth=calm).status_code == 200
        assert api.get(f"/v1/agents/{agent}/grants",
                       auth=agent_auth(settings, agent)).status_code == 200
