"""The console's pages and their live updates (Server-Sent Events). L3.

Imports fastapi, jinja2 (through fastapi.templating) and the console's data and sessions.

Every page needs a session (otherwise 303 to the sign-in page). A live page holds an SSE stream
that sends its table again every second (the decisions feed every 2 s), rendered on the server:
the countdowns move, a revoked grant leaves and a new decision appears without any script of
ours (htmx and its SSE extension swap the HTML).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.templating import Jinja2Templates

from broker.api.auth import runtime_of
from broker.api.console import data
from broker.api.console.session import LOGIN_COOKIE, Session, current, set_cookie, to_login
from broker.errors import BrokerError

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["latency_ms"] = data.latency_ms
router = APIRouter(prefix="/console", include_in_schema=False)
LIVE_EVERY_S = 1.0

Fragment = Callable[[Request, datetime], Awaitable[dict[str, Any]]]


async def _grants(request: Request, now: datetime) -> dict[str, Any]:
    return {"rows": await data.live_grants(runtime_of(request), now)}


async def _revocations(request: Request, now: datetime) -> dict[str, Any]:
    return {"status": data.revocations(runtime_of(request), now)}


async def _approvals(request: Request, now: datetime) -> dict[str, Any]:
    return {"rows": await data.approvals(runtime_of(request), now)}


async def _decisions(request: Request, now: datetime) -> dict[str, Any]:
    return {"rows": await asyncio.to_thread(data.decisions, runtime_of(request), now)}


LIVE: dict[str, Fragment] = {"grants": _grants, "revocations": _revocations,
                             "approvals": _approvals, "decisions": _decisions}
TITLES = {"grants": "Live grants", "revocations": "Revocations", "approvals": "Approvals",
          "decisions": "Decisions and rejections"}
# The decisions feed reads the sealed audit back from Kafka: every 2 s, not every second.
EVERY_S = {"decisions": 2.0}


def page(request: Request, name: str, session: Session | None, **context: Any) -> HTMLResponse:
    """A full page (the notes of earlier actions shown once)."""
    notes = list(session.notes) if session is not None else []
    if session is not None:
        session.notes.clear()
    return templates.TemplateResponse(request, f"{name}.html", {
        "session": session, "notes": notes, "now": datetime.now(UTC), "page": name,
        "titles": TITLES, **context})


async def _fragment(request: Request, name: str, session: Session, now: datetime) -> str:
    try:
        context = await LIVE[name](request, now)
    except BrokerError as exc:
        context = {"problem": str(exc)}
    return templates.get_template(f"_{name}.html").render(
        session=session, now=now, **context)


@router.get("", response_class=HTMLResponse)
def home() -> Response:
    """The console starts on the live grants."""
    return _redirect("/console/grants")


def _redirect(url: str) -> Response:
    return Response(status_code=303, headers={"Location": url})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    """The sign-in form: paste an operator assertion for POST /console/login."""
    token = secrets.token_urlsafe(32)
    response = page(request, "login", None, csrf=token, problem="")
    set_cookie(response, LOGIN_COOKIE, token, 600, request.url.scheme == "https")
    return response


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, agent: str = "", at: int | None = None,
                verify: bool = False) -> Response:
    """One agent's audit timeline, and what it could do at the slider's instant (replay);
    with ``verify``, the chain verification of the whole sealed audit."""
    session = current(request)
    if session is None:
        return to_login()
    now = datetime.now(UTC)
    view, problem, chain = None, "", None
    if verify:
        try:
            chain = await asyncio.to_thread(data.chain_status, runtime_of(request))
        except BrokerError as exc:
            problem = str(exc)
    if agent:
        try:
            records = await asyncio.to_thread(data.of_agent, runtime_of(request), agent, now)
        except BrokerError as exc:
            problem = str(exc)
        else:
            instant = datetime.fromtimestamp(at, tz=UTC) if at is not None else None
            view = data.audit_view(records, agent, instant, now)
    return page(request, "audit", session, agent=agent, view=view, problem=problem,
                chain=chain)


@router.get("/agents", response_class=HTMLResponse)
async def agents(request: Request) -> Response:
    """The agents: class, owner, model, status, key age, last request, what each holds now."""
    session = current(request)
    if session is None:
        return to_login()
    now, rows, problem = datetime.now(UTC), [], ""
    try:
        rows = await data.agents(runtime_of(request), now)
    except BrokerError as exc:
        problem = str(exc)
    return page(request, "agents", session, rows=rows, problem=problem)


@router.get("/{name}", response_class=HTMLResponse)
async def live_page(request: Request, name: str) -> Response:
    """A live page (grants, revocations, approvals, decisions): the table now, then over SSE."""
    session = current(request)
    if session is None:
        return to_login()
    if name not in LIVE:
        return Response("no such console page", status_code=404, media_type="text/plain")
    table = await _fragment(request, name, session, datetime.now(UTC))
    return page(request, name, session, table=table, live=name)


@router.get("/live/{name}", response_class=EventSourceResponse)
async def live(request: Request, name: str) -> AsyncIterator[ServerSentEvent]:
    """The page's table, rendered again every second, while the session lasts."""
    session = current(request)
    if session is None or name not in LIVE:
        return
    while not await request.is_disconnected():
        now = datetime.now(UTC)
        if session.expires_at <= now:
            return
        html = await _fragment(request, name, session, now)
        yield ServerSentEvent(event=name, raw_data=html.replace("\n", " "))
        await asyncio.sleep(EVERY_S.get(name, LIVE_EVERY_S))
