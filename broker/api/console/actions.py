"""The console's state-changing forms: sign in and out, revoke, approve, deny. L3.

Imports fastapi, broker (sdk.operator, schemas) and the console's sessions.

Every form but the sign-in needs a session and its CSRF token (403 without it); the sign-in form
needs the token of its own cookie. Each action is published through the API's relay with the
signed-in operator's assertion, so the worker admits it as that operator's own, refuses it as it
would refuse the operator, and audits it in the operator's name. The outcome is shown once on the
page the operator returns to.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from broker.api.auth import runtime_of
from broker.api.console.pages import page
from broker.api.console.session import (
    COOKIE,
    LOGIN_COOKIE,
    Session,
    csrf_ok,
    current,
    sessions_of,
    set_cookie,
    to_login,
    verify_login,
)
from broker.errors import BrokerError
from broker.sdk.operator.approvals import Approver
from broker.sdk.operator.client import revoke as revoke_agent
from schemas import topics
from schemas.events import AgentCommand, CommandAnswered, GrantCommand

router = APIRouter(prefix="/console", include_in_schema=False)
Field = Annotated[str, Form()]
Csrf = Annotated[str, Form()]


def _back(url: str) -> Response:
    return Response(status_code=303, headers={"Location": url})


def _refused(why: str) -> Response:
    return HTMLResponse(f"<p>refused: {why}</p>", status_code=403)


def _session(request: Request, csrf: str) -> Session | Response:
    """The session of a form that changes state, or the refusal (no session, bad CSRF)."""
    session = current(request)
    if session is None:
        return to_login()
    if not csrf_ok(session.csrf, csrf):
        return _refused("the form's CSRF token is missing or wrong")
    return session


@router.post("/login", response_class=HTMLResponse)
def login(request: Request, assertion: Field, csrf: Annotated[str, Form()] = "") -> Response:
    """Sign in with an operator assertion for POST /console/login."""
    if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), csrf):
        return _refused("the sign-in form's CSRF token is missing or wrong: reload the form")
    verified = verify_login(request, assertion)
    if isinstance(verified, str):
        response = page(request, "login", None, csrf=csrf, problem=verified)
        response.status_code = 401
        return response
    sid, session = sessions_of(request).open(verified)
    back = _back("/console/grants")
    set_cookie(back, COOKIE, sid, session.left_s(datetime.now(UTC)),
               request.url.scheme == "https")
    back.delete_cookie(LOGIN_COOKIE, path="/console")
    return back


@router.post("/logout")
def logout(request: Request, csrf: Csrf = "") -> Response:
    """Sign out."""
    session = _session(request, csrf)
    if isinstance(session, Response):
        return session
    sessions_of(request).close(request.cookies.get(COOKIE))
    return to_login()


@router.post("/grants/revoke")
def revoke_grant(request: Request, agent_id: Field, grant_id: Field,
                 csrf: Csrf = "", reason: Field = "revoked from the console") -> Response:
    """Revoke one grant (an operator grant command) and wait for the worker's answer."""
    session = _session(request, csrf)
    if isinstance(session, Response):
        return session
    command = GrantCommand(
        command_id=f"op-revoke-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
        action="revoke", reason=reason, issued_at=datetime.now(UTC))
    try:
        answer = _relay(request, session, topics.GRANT_COMMANDS.name, command)
    except BrokerError as exc:
        session.notes.append(f"revoking grant {grant_id} failed: {exc}")
        return _back("/console/grants")
    said = "revoked" if answer.outcome == "done" else "refused"
    session.notes.append(f"grant {grant_id} of {agent_id}: {said} ({answer.reason})")
    return _back("/console/grants")


@router.post("/agents/revoke")
def revoke_all(request: Request, agent_id: Field, csrf: Csrf = "", suspend: Field = "",
               reason: Field = "revoked from the console") -> Response:
    """Revoke every grant of an agent (an operator revocation) and wait until applied; with
    ``suspend``, also bar it from acting until an operator resumes it (the quarantine)."""
    session = _session(request, csrf)
    if isinstance(session, Response):
        return session
    runtime = runtime_of(request)
    try:
        rev = revoke_agent(runtime.settings, runtime.kafka, agent_id, reason,
                           operator=session.name, trust=runtime.verifier(),
                           timeout=runtime.settings.decision_timeout_s,
                           publisher=runtime.relay(session.token), watcher=runtime.audits)
    except BrokerError as exc:
        session.notes.append(f"revoking {agent_id} failed: {exc}")
        return _back("/console/grants")
    session.notes.append(f"revoked {len(rev.grant_ids)} grant(s) of {agent_id}")
    if suspend:
        session.notes.append(_command(request, session, "suspend", agent_id, reason))
    return _back("/console/grants")


def _relay(request: Request, session: Session, topic: str,
           command: AgentCommand | GrantCommand) -> CommandAnswered:
    """Publish an operator command with the session's assertion and wait for the worker's
    answer (BrokerError when either fails)."""
    runtime = runtime_of(request)
    assert runtime.decisions is not None
    runtime.relay(session.token).publish(topic, command)
    return runtime.decisions.wait_answer(command.command_id, runtime.settings.decision_timeout_s)


def _command(request: Request, session: Session, action: str, agent_id: str,
             reason: str) -> str:
    """Run an operator registry command as the session's operator; what came of it."""
    command = AgentCommand.model_validate({
        "command_id": f"op-{action}-{uuid.uuid4()}", "action": action, "agent_id": agent_id,
        "reason": reason, "issued_at": datetime.now(UTC)})
    try:
        answer = _relay(request, session, topics.REGISTRY.name, command)
    except BrokerError as exc:
        return f"{action} {agent_id} failed: {exc}"
    said = "done" if answer.outcome == "done" else f"refused ({answer.reason})"
    return f"{action} {agent_id}: {said}"


@router.post("/agents/standing")
def standing(request: Request, agent_id: Field, action: Field, csrf: Csrf = "",
             reason: Field = "from the console") -> Response:
    """Suspend or resume an agent (an operator registry command); waits for the answer."""
    session = _session(request, csrf)
    if isinstance(session, Response):
        return session
    if action not in ("suspend", "resume"):
        return _refused(f"an agent is suspended or resumed, not {action!r}")
    session.notes.append(_command(request, session, action, agent_id, reason))
    return _back("/console/agents")


@router.post("/approvals/vote")
def vote(request: Request, agent_id: Field, request_id: Field, verdict: Field,
         csrf: Csrf = "", reason: Field = "") -> Response:
    """Approve or deny a held request as the signed-in operator (never one's own)."""
    session = _session(request, csrf)
    if isinstance(session, Response):
        return session
    if verdict not in ("approve", "deny"):
        return _refused(f"a vote is approve or deny, not {verdict!r}")
    if session.principal == agent_id or session.name == agent_id:
        session.notes.append(f"refused: {session.principal} requested {request_id} and can "
                             "never approve its own request")
        return _back("/console/approvals")
    runtime = runtime_of(request)
    try:
        Approver(session.principal, runtime.relay(session.token)).vote(
            request_id, agent_id, "approve" if verdict == "approve" else "deny",
            reason or f"{verdict} from the console")
    except BrokerError as exc:
        session.notes.append(f"vote on {request_id} failed: {exc}")
        return _back("/console/approvals")
    session.notes.append(f"{verdict} on {request_id} of {agent_id} sent as {session.principal}")
    return _back("/console/approvals")
