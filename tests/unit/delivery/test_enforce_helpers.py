"""Enforcement helpers without Kafka: status codes, reasons, identity (a stub view)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from broker.errors import AccessDenied
from broker.sdk.resource.enforce import GrantMiddleware, Rule, check, enforce
from broker.sdk.resource.fastapi_deps import require_scope
from broker.sdk.resource.index import Verdict

FREEZE = "payments:accounts.freeze"


class StubView:
    """Answers from a fixed table; 'stale' makes every answer unavailable."""

    def __init__(self, stale: bool = False) -> None:
        self.stale = stale
        self.asked: list[tuple[str, str, str, Any]] = []

    def allows(self, agent_id: str, scope: str, resource: str = "", now: Any = None, *,
               at_least: Any = None) -> Verdict:
        self.asked.append((agent_id, scope, resource, at_least))
        if self.stale:
            return Verdict(False, "grant view last proven current 9.0s ago", unavailable=True)
        if (agent_id, scope, resource) == ("a-1", FREEZE, "acct-1"):
            return Verdict(True, "granted")
        return Verdict(False, f"no active grant of {scope} on {resource} for {agent_id}")


def service(view: StubView) -> FastAPI:
    app = FastAPI()
    may_freeze = Depends(require_scope(FREEZE, resource="{account}", view=view))

    @app.post("/a/{account}")
    def dep(account: str, verdict: Verdict = may_freeze) -> dict[str, str]:
        return {"ok": verdict.reason}

    @app.post("/b/{account}")
    def mid(account: str) -> dict[str, str]:
        return {"ok": account}

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {"ok": "open"}

    app.add_middleware(GrantMiddleware, view=view,
                       rules=[Rule("POST", r"/b/(?P<account>[^/]+)", FREEZE, "{account}")])
    return app


@pytest.mark.parametrize("path", ["/a/acct-1", "/b/acct-1"])
def test_allowed_forbidden_and_unavailable(path: str) -> None:
    """200 with the grant; 403 with the reason; 503 + Retry-After when the view is stale."""
    view = StubView()
    client = TestClient(service(view))
    assert client.post(path, headers={"X-Permbroker-Agent": "a-1"}).status_code == 200
    other = client.post(path, headers={"X-Permbroker-Agent": "a-2"})
    assert other.status_code == 403
    assert other.headers["x-permbroker-deny-reason"].startswith("no active grant")
    view.stale = True
    stale = client.post(path, headers={"X-Permbroker-Agent": "a-1"})
    assert stale.status_code == 503 and stale.headers["retry-after"] == "1"


def test_consistency_header_is_passed_on_and_unmatched_paths_pass() -> None:
    """The X-Permbroker-Consistency header reaches the view as at_least; other paths pass."""
    view = StubView()
    client = TestClient(service(view))
    client.post("/b/acct-1", headers={"X-Permbroker-Agent": "a-1",
                                      "X-Permbroker-Consistency": "ct1:t@0:5"})
    assert view.asked[-1] == ("a-1", FREEZE, "acct-1", "ct1:t@0:5")
    assert client.get("/open").status_code == 200


def test_check_denies_an_unknown_caller_and_enforce_raises_with_the_reason() -> None:
    """No identity is a denial; enforce() raises AccessDenied carrying the view's reason."""
    view = StubView()
    assert not check(view, None, FREEZE, "acct-1").allowed
    assert enforce(view, "a-1", FREEZE, "acct-1").allowed
    with pytest.raises(AccessDenied, match="no active grant"):
        enforce(view, "a-1", FREEZE, "acct-2")
