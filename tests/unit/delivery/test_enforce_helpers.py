"""Enforcement helpers without Kafka: status codes, reasons, identity by grant token (a stub view).

The view is a stub (a table of grants); the tokens are real, minted with a broker keyring and
checked by the real ``GrantTokenVerifier``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import BrokerKey, write_keyring
from broker.adapters.crypto.tokens import BrokerKeyring, mint_grant_token
from broker.errors import AccessDenied
from broker.sdk.resource.enforce import GrantMiddleware, Rule, check, check_agent, enforce
from broker.sdk.resource.fastapi_deps import require_scope
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.tokens import GrantTokenVerifier, StaticKeys
from schemas.events import GrantIssued

FREEZE = "payments:accounts.freeze"
NOW = datetime.now(UTC).replace(microsecond=0)


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

    def grant_state(self, agent_id: str, grant_id: str) -> str:
        return "active"


@pytest.fixture
def keyring(tmp_path: Path) -> BrokerKeyring:
    """A broker keyring with one active key."""
    path = tmp_path / "broker.json"
    write_keyring(path, "permbroker", [BrokerKey(SigningKey.generate(), NOW, NOW)])
    return BrokerKeyring(path)


def token_of(keyring: BrokerKeyring, agent: str) -> str:
    # Issued now, not at import: a suite that runs for minutes first must not see it expired.
    now = datetime.now(UTC)
    grant = GrantIssued(
        grant_id=f"grant-{agent}", agent_id=agent, request_id="req-1", scopes=(FREEZE,),
        resources=("acct-1",), issued_at=now, expires_at=now + timedelta(minutes=5),
        policy_revision="sha256:ab", rules=("r",), model_version="1", model_digest="sha256:0")
    token, _exp = mint_grant_token(grant, "payments", keyring, now=now, max_ttl_s=60)
    return token


def verifier_of(keyring: BrokerKeyring, view: StubView) -> GrantTokenVerifier:
    return GrantTokenVerifier(StaticKeys(keyring.jwks(NOW).document()), audience="payments",
                              grants=view)


def service(view: StubView, verifier: GrantTokenVerifier | None = None, *,
            header_identity: bool = False) -> FastAPI:
    app = FastAPI()
    app.state.grant_verifier = verifier
    may_freeze = Depends(require_scope(FREEZE, resource="{account}", view=view,
                                       header_identity=header_identity))

    @app.post("/a/{account}")
    def dep(account: str, verdict: Verdict = may_freeze) -> dict[str, str]:
        return {"ok": verdict.reason}

    @app.post("/b/{account}")
    def mid(account: str) -> dict[str, str]:
        return {"ok": account}

    @app.get("/open")
    def open_route() -> dict[str, str]:
        return {"ok": "open"}

    app.add_middleware(GrantMiddleware, view=view, verifier=verifier,
                       header_identity=header_identity,
                       rules=[Rule("POST", r"/b/(?P<account>[^/]+)", FREEZE, "{account}")])
    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/a/acct-1", "/b/acct-1"])
def test_a_grant_token_proves_the_caller(path: str, keyring: BrokerKeyring) -> None:
    """Allowed with the agent's grant token; 403 for another agent's; 503 when the view is
    stale; 403 with the verifier's reason for a token that does not verify."""
    view = StubView()
    client = TestClient(service(view, verifier_of(keyring, view)))
    assert client.post(path, headers=bearer(token_of(keyring, "a-1"))).status_code == 200
    other = client.post(path, headers=bearer(token_of(keyring, "a-2")))
    assert other.status_code == 403
    assert other.headers["x-permbroker-deny-reason"].startswith("no active grant")
    forged = client.post(path, headers=bearer(token_of(keyring, "a-1")[:-4] + "AAAA"))
    assert forged.status_code == 403
    assert "grant token refused (bad-signature)" in forged.headers["x-permbroker-deny-reason"]
    view.stale = True
    stale = client.post(path, headers=bearer(token_of(keyring, "a-1")))
    assert stale.status_code == 503 and stale.headers["retry-after"] == "1"


@pytest.mark.parametrize("path", ["/a/acct-1", "/b/acct-1"])
def test_the_agent_header_alone_is_refused_unless_header_mode_is_on(
        path: str, keyring: BrokerKeyring) -> None:
    """X-Permbroker-Agent names no one by default; with header_identity=True (a trusted mesh
    that sets it) it is the caller."""
    view = StubView()
    default = TestClient(service(view, verifier_of(keyring, view)))
    refused = default.post(path, headers={"X-Permbroker-Agent": "a-1"})
    assert refused.status_code == 403
    assert "no grant token on the request" in refused.headers["x-permbroker-deny-reason"]
    assert view.asked == []  # nobody was identified, so nothing was asked of the view
    mesh = TestClient(service(view, header_identity=True))
    assert mesh.post(path, headers={"X-Permbroker-Agent": "a-1"}).status_code == 200
    assert mesh.post(path, headers={"X-Permbroker-Agent": "a-2"}).status_code == 403


def test_a_service_without_a_verifier_fails_closed() -> None:
    """The middleware refuses to be built without a way to identify callers; the dependency
    without a verifier on the app denies every call with the reason."""
    with pytest.raises(ValueError, match="grant token"):
        GrantMiddleware(lambda *_: None, view=StubView(), rules=[])  # type: ignore[arg-type]
    app = FastAPI()
    may_freeze = Depends(require_scope(FREEZE, view=StubView()))

    @app.post("/x")
    def route(verdict: Verdict = may_freeze) -> dict[str, str]:
        return {"ok": "?"}

    denied = TestClient(app).post("/x", headers={"X-Permbroker-Agent": "a-1"})
    assert denied.status_code == 403 and "no grant-token verifier" in denied.text


def test_consistency_header_is_passed_on_and_unmatched_paths_pass(
        keyring: BrokerKeyring) -> None:
    """The X-Permbroker-Consistency header reaches the view as at_least; other paths pass."""
    view = StubView()
    client = TestClient(service(view, verifier_of(keyring, view)))
    client.post("/b/acct-1", headers={**bearer(token_of(keyring, "a-1")),
                                      "X-Permbroker-Consistency": "ct1:t@0:5"})
    assert view.asked[-1] == ("a-1", FREEZE, "acct-1", "ct1:t@0:5")
    assert client.get("/open").status_code == 200


def test_check_and_enforce_identify_by_token(keyring: BrokerKeyring) -> None:
    """check() denies without a valid token; enforce() raises AccessDenied with the reason;
    check_agent() is the verdict for an identity established elsewhere."""
    view = StubView()
    verifier = verifier_of(keyring, view)
    assert not check(view, None, FREEZE, "acct-1", verifier=verifier).allowed
    assert check(view, token_of(keyring, "a-1"), FREEZE, "acct-1", verifier=verifier).allowed
    with pytest.raises(AccessDenied, match="no active grant"):
        enforce(view, token_of(keyring, "a-1"), FREEZE, "acct-2", verifier=verifier)
    assert not check_agent(view, None, FREEZE, "acct-1").allowed
    assert check_agent(view, "a-1", FREEZE, "acct-1").allowed
