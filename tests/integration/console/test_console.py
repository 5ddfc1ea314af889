"""The operator console in a real browser (the OS's chromium) on real Kafka, Redis and a worker.

Playwright drives the distribution's chromium (``make deps`` installs it; Playwright's own browser
download is never used) through ``executable_path``. The tests skip, with the reason, only where
chromium is not installed (or ``CHROMIUM_PATH`` points elsewhere). Each test saves screenshots of
the pages it drives under reports/console/.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, expect, sync_playwright

from broker.adapters.crypto.assertions import mint
from broker.adapters.crypto.keystore import AgentKeyStore, load_operator, operator_name
from broker.adapters.crypto.service_key import ensure_service
from broker.api.app import create_app
from broker.config import Settings
from broker.sdk.operator.approvals import Approver
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, EscalationPending
from tests.support.approval_policy import requester
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.factories import fraud_request
from tests.support.identities import (
    Registrar,
    agent_auth,
    agent_client,
    api_settings,
    shared_trust,
)
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[3] / "reports" / "console"
PAGES = ("grants", "agents", "revocations", "approvals", "decisions", "audit")
READ = "payments:accounts.read"  # held for the test operator and one verifier (quorum 2)
WAIT = 60.0  # conditions met sooner end the wait; two shared cores can be slow


def chromium_or_skip() -> str:
    """The chromium executable, or a skip saying how to install it (a failure under CI, where
    ``make deps`` must have installed it: a console left untested would pass silently)."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("CI"):
            pytest.fail(f"chromium not found at {CHROMIUM} under CI: make deps must install it")
        pytest.skip(f"chromium not found at {CHROMIUM}: make deps installs it "
                    "(apt-get install -y chromium)")
    return CHROMIUM


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """``app`` on uvicorn at a free loopback port, ready (its /readyz 200): the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 30, "uvicorn to start")
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 60,
                   "the API to be ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def login_assertion(settings: Settings, now: datetime | None = None) -> str:
    """The test operator's assertion for the console's sign-in (the longest life allowed)."""
    principal, key = load_operator(settings.key_path("operator"))
    return mint(key, principal, "POST", "/console/login", now=now or datetime.now(UTC),
                ttl_s=settings.api_assertion_max_life_s)


@pytest.fixture(scope="module")
def console(worker: WorkerProcess, settings: Settings) -> Iterator[str]:
    """The API, serving the console, on uvicorn: its base URL."""
    with served(create_app(api_settings(settings, "console"))) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium (the distribution's) for this module."""
    path = chromium_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, console: str) -> Iterator[Page]:
    """A fresh browser context (no cookies) on the console."""
    context = browser.new_context(base_url=console)
    yield context.new_page()
    context.close()


def sign_in(page: Page, settings: Settings) -> None:
    """Sign in as the test operator through the form (from a page that redirected there)."""
    page.goto("/console/grants")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.fill("textarea[name=assertion]", login_assertion(settings))
    page.click("#sign-in")
    expect(page).to_have_url(re.compile(r"/console/grants$"))


def wait_live(page: Page) -> None:
    """The page's SSE stream is open (an update sent before would be missed)."""
    page.wait_for_function(
        "() => { const d = document.querySelector('[sse-connect]')['htmx-internal-data'];"
        " return d && d.sseEventSource && d.sseEventSource.readyState === 1; }")


def shot(page: Page, name: str) -> None:
    """Save a screenshot of the page under reports/console/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_without_a_session_every_page_redirects_and_forms_need_the_csrf_token(
    console: str, settings: Settings, agents: Callable[[str], str],
) -> None:
    """No session: 303 to sign-in; the cookie is HttpOnly and SameSite=Strict; a POST without
    (or with a wrong) CSRF token is 403; an agent cannot sign in; an assertion signs in once."""
    with httpx.Client(base_url=console, timeout=30) as http:
        for name in PAGES:
            r = http.get(f"/console/{name}")
            assert r.status_code == 303 and r.headers["location"] == "/console/login", name
        form = http.get("/console/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert form.status_code == 200 and token is not None
        assertion = login_assertion(settings)
        no_csrf = http.post("/console/login", data={"assertion": assertion})
        assert no_csrf.status_code == 403
        agent = agents("f")
        as_agent = agent_auth(settings, agent).header_value("POST", "/console/login")
        refused = http.post("/console/login", data={"assertion": as_agent,
                                                    "csrf": token.group(1)})
        assert refused.status_code == 401 and "not an operator" in refused.text
        signed = http.post("/console/login", data={"assertion": assertion,
                                                   "csrf": token.group(1)})
        assert signed.status_code == 303 and signed.headers["location"] == "/console/grants"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        assert http.get("/console/grants").status_code == 200
        form = {"agent_id": agent, "grant_id": "g-0000"}
        assert http.post("/console/grants/revoke", data=form).status_code == 403
        assert http.post("/console/grants/revoke",
                         data={**form, "csrf": "forged"}).status_code == 403
        assert http.post("/console/agents/revoke", data={"agent_id": agent}).status_code == 403
    with httpx.Client(base_url=console, timeout=30) as again:
        form = again.get("/console/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None
        reused = again.post("/console/login", data={"assertion": assertion,
                                                    "csrf": token.group(1)})
        assert reused.status_code == 401 and "used before" in reused.text


def test_a_grant_appears_counts_down_is_revoked_and_the_audit_replays_it(
    page: Page, settings: Settings, agents: Callable[[str], str], run_id: str,
) -> None:
    """An escalation appears on Live grants within 2 s and counts down; revoking one grant
    from its row removes it; revoking the agent from the other row ends it, the agent's next
    check is denied and the payments view's acknowledgement is on Revocations; the audit slider
    inside the grant shows the scope, after the revocation not."""
    agent, point = agents("f"), f"payments-{run_id}-console"
    sign_in(page, settings)
    wait_live(page)
    with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings),
                   topic=topics.GRANTS_PAYMENTS.name,
                   enforcement_point=ensure_service(settings, point)) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        first = fraud_grant(client, (FREEZE,))
        row = page.locator(f"#grant-{first.grant_id}")
        expect(row).to_be_visible(timeout=2000)
        second = fraud_grant(client, (FREEZE,))
        other = page.locator(f"#grant-{second.grant_id}")
        expect(other).to_be_visible(timeout=2000)
        expect(row).to_contain_text(FREEZE)
        left = float(row.get_attribute("data-left") or "0")
        assert 0 < left <= 900
        page.wait_for_function(
            f"() => {{ const r = document.getElementById('grant-{first.grant_id}');"
            f" return r && parseFloat(r.dataset.left) < {left}; }}", timeout=WAIT * 1000)
        shot(page, "grants")

        row.locator("button.revoke-grant").click()
        expect(page.locator(".note")).to_contain_text(f"grant {first.grant_id}",
                                                      timeout=WAIT * 1000)
        expect(page.locator(".note")).to_contain_text("revoked")
        expect(page.locator(f"#grant-{first.grant_id}")).to_have_count(0)
        wait_until(lambda: view.grant_state(agent, first.grant_id) == "ended", WAIT,
                   "the single revocation at the payments view")
        assert view.grant_state(agent, second.grant_id) == "active"

        page.locator(f"#grant-{second.grant_id} button.revoke-agent").click()
        expect(page.locator(".note")).to_contain_text(f"revoked 1 grant(s) of {agent}",
                                                      timeout=WAIT * 1000)
        revoked_at = datetime.now(UTC)
        expect(page.locator(f"#grant-{second.grant_id}")).to_have_count(0)
        wait_until(lambda: not view.allows(agent, FREEZE, "acct-1").allowed, WAIT,
                   "the agent's next check denied")

    page.goto("/console/revocations")
    wait_live(page)
    ack = page.locator(f'tr.point[data-point="{point}"] .ack[data-agent="{agent}"]')
    expect(ack).to_be_visible(timeout=WAIT * 1000)
    expect(ack).to_contain_text(" ms")
    shot(page, "revocations")

    _audit_slider(page, agent, second, revoked_at)


def _audit_slider(page: Page, agent: str, grant: EscalationDecided,
                  revoked_at: datetime) -> None:
    """At an instant inside the grant the replay shows the scope; after the revocation not."""
    inside = int(grant.decided_at.timestamp()) + 1
    after = int((revoked_at + timedelta(seconds=2)).timestamp())

    def at(instant: int) -> None:
        page.goto(f"/console/audit?agent={agent}")
        page.locator("#as-of").evaluate("(e, v) => { e.value = v; }", str(instant))
        page.click("#show")
        expect(page.locator("#instant")).to_have_text(
            datetime.fromtimestamp(instant, tz=UTC).strftime("%Y-%m-%d %H:%M:%S"))

    def sealed() -> bool:  # the sealer writes the audit a moment after the worker acts
        page.goto(f"/console/audit?agent={agent}")
        return page.locator("#timeline tr", has_text="risk.observed").count() > 0

    def reaches_after() -> bool:  # the slider ends now: wait until now is past ``after``
        page.goto(f"/console/audit?agent={agent}")
        return int(page.locator("#as-of").get_attribute("max") or 0) >= after

    wait_until(sealed, WAIT, "the revocation in the sealed audit", every=0.5)
    wait_until(reaches_after, WAIT, "the slider to reach past the revocation", every=0.5)
    at(inside)
    expect(page.locator(f'#as-of-grants tr[data-grant="{grant.grant_id}"]')).to_contain_text(
        FREEZE)
    shot(page, "audit")
    at(after)
    expect(page.locator("#as-of-grants .active-grant")).to_have_count(0)
    expect(page.locator("#nothing")).to_be_visible()
    page.click("#verify")
    expect(page.locator("#chain")).to_contain_text("OK", timeout=WAIT * 1000)
    expect(page.locator("#chain .problem")).to_have_count(0)


def test_an_approval_from_the_console_counts_once_and_self_approval_is_refused(
    page: Page, settings: Settings, run_id: str, registrar: Registrar, tap: Callable[[str], Tap],
) -> None:
    """The operator's approval shows as 1 of 2 and a second click still counts once; the
    requesting agent's own approval is refused and never counts."""
    agent = registrar.ensure(requester(run_id, "a", 30))
    audit = tap(topics.AUDIT_RAW.name)
    request = fraud_request(agent, scopes=(READ,), duration_s=300)
    with agent_client(settings, agent) as client:
        client.send(request)
        assert isinstance(client.await_pending(request.request_id, timeout=WAIT),
                          EscalationPending)
    held = f"#held-{request.request_id}"
    sign_in(page, settings)
    page.goto("/console/approvals")
    wait_live(page)
    expect(page.locator(f"{held} .quorum")).to_have_text("0 of 2", timeout=WAIT * 1000)
    for n in (1, 2):
        page.locator(f"{held} button.approve").click()
        expect(page.locator(".note")).to_contain_text(f"approve on {request.request_id}",
                                                      timeout=WAIT * 1000)
        audit.wait_for(AuditRecord, lambda r: r.kind == "approval.voted"
                       and r.subject_id == request.request_id, count=n, timeout=WAIT)
    own = Approver.agent(agent, role_access(settings, topics.AGENT),
                         keys=AgentKeyStore.from_settings(settings)).approve(
        request.request_id, agent, "my own")
    refused = audit.wait_for(AuditRecord, lambda r: r.kind == "identity.rejected"
                             and r.subject_id == own.vote_id, timeout=WAIT)[0]
    assert refused.rules == ("identity:self-approval",)
    page.goto("/console/approvals")
    expect(page.locator(f"{held} .quorum")).to_have_text(f"1 of 2 ({operator_name()})",
                                                         timeout=WAIT * 1000)
    shot(page, "approvals")


def test_an_agent_is_suspended_and_resumed_from_the_agents_page(
    page: Page, settings: Settings, agents: Callable[[str], str],
) -> None:
    """"Revoke + suspend" on a grant's row ends the grant and suspends the agent; the agents
    page lists it with what it holds, resumes it and suspends it (its next request is then
    denied, and the decisions page shows it) and resumes it again."""
    agent = agents("f")

    def act(button: str, said: str, status: str) -> None:
        page.locator(f"#agent-{agent} button.{button}").click()
        expect(page.locator(".note")).to_contain_text(said, timeout=WAIT * 1000)
        expect(page.locator(f"#agent-{agent} .status")).to_have_text(status)

    with agent_client(settings, agent) as client:
        granted = fraud_grant(client, (FREEZE,))
        sign_in(page, settings)
        page.locator(f"#grant-{granted.grant_id} button.revoke-suspend").click()
        expect(page.locator(".note").first).to_contain_text(f"revoked 1 grant(s) of {agent}",
                                                            timeout=WAIT * 1000)
        expect(page.locator(".note").nth(1)).to_contain_text(f"suspend {agent}: done")
        page.goto("/console/agents")
        expect(page.locator(f"#agent-{agent} .status")).to_have_text("suspended")
        act("resume", f"resume {agent}: done", "active")
        again = fraud_grant(client, (FREEZE,))
        page.goto("/console/agents")
        expect(page.locator(f"#agent-{agent}")).to_contain_text(FREEZE)
        kid = AgentKeyStore.from_settings(settings).load(agent).current.kid
        expect(page.locator(f"#agent-{agent}")).to_contain_text(kid[:12])
        expect(page.locator(f"#agent-{agent} .risk")).to_have_text(re.compile(r"^\d\.\d\d$"))
        shot(page, "agents")
        act("suspend", f"suspend {agent}: done", "suspended")
        denied = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=60,
                                           reason="while suspended", confidence=0.95)
        assert denied.outcome == "denied" and again.grant_id, denied
        act("resume", f"resume {agent}: done", "active")

    def listed() -> bool:  # on the decisions page once the sealer wrote it
        page.goto("/console/decisions")
        return page.locator(f'tr[data-subject="{denied.request_id}"]').count() > 0

    wait_until(listed, WAIT, "the denial on the decisions page", every=0.5)
    expect(page.locator(f'tr[data-subject="{denied.request_id}"]')).to_contain_text("denied")
    shot(page, "decisions")


def test_a_new_decision_appears_live_with_its_latency(
    page: Page, settings: Settings, agents: Callable[[str], str],
) -> None:
    """The decisions page, left open, shows a decision made after it loaded (pushed over SSE,
    the page never reloads), with its latency from the request's append to the decision."""
    sign_in(page, settings)
    page.goto("/console/decisions")
    wait_live(page)
    page.evaluate("() => { window.loadedOnce = 'yes'; }")  # gone if the page reloads
    with agent_client(settings, agents("f")) as client:
        decision = fraud_grant(client, (FREEZE,))
    row = page.locator(f'tr.escalation-decided[data-subject="{decision.request_id}"]').first
    expect(row).to_contain_text("granted", timeout=WAIT * 1000)
    expect(row.locator(".latency")).to_have_text(re.compile(r"^\d+\.\d ms$"))
    assert page.evaluate("() => window.loadedOnce") == "yes"
    shot(page, "decisions-live")


# A scheme-relative or absolute URL, or a CSS url() that is not the console's own.
EXTERNAL = re.compile(r"""(?i:https?:)?//[\w.-]+|url\(\s*['"]?(?!/console/)""")
LINKED = re.compile(r"""(?:src|href)="(/console/static/[^"]+)\"""")


def test_no_served_page_or_asset_names_an_external_url(
    page: Page, console: str, settings: Settings,
) -> None:
    """Every page and every asset it loads comes from the console itself: the browser asks no
    other origin, and no page or asset text holds an external URL (it works offline)."""
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    sign_in(page, settings)
    bodies: dict[str, str] = {}
    for name in (*PAGES, "login"):
        page.goto(f"/console/{name}")
        bodies[name] = page.content()
    assets = {a for text in bodies.values() for a in LINKED.findall(text)}
    assert {"/console/static/htmx.min.js", "/console/static/sse.min.js",
            "/console/static/console.css"} <= assets
    with httpx.Client(base_url=console, timeout=30) as http:
        for asset in assets:
            r = http.get(asset)
            assert r.status_code == 200, asset
            bodies[asset] = r.text
    assert asked and all(u.startswith(console + "/console") for u in asked), asked
    found = {name: EXTERNAL.findall(text) for name, text in bodies.items()}
    assert not any(found.values()), found
