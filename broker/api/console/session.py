"""Console sessions: operator sign-in by assertion, the session cookie, CSRF. L3.

Imports fastapi and the API's auth (the same identities as every API call).

There is no password store: an operator signs in with an assertion made with their own key for
``POST /console/login`` (``permbroker keys assertion POST /console/login --ttl 120``), verified
like any API assertion and spent once. The session holds that assertion and lives exactly as long
as it does: every console action is relayed with it, so the worker judges each action as signed
by that operator (and audits it in their name) with the checks of any operator call. The cookie
is random, HttpOnly and SameSite=Strict; every state-changing form carries the session's CSRF
token, compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastapi import Request
from fastapi.responses import RedirectResponse, Response

from broker.adapters.crypto.assertions import Verified
from broker.api.auth import runtime_of
from broker.identity.rules import Rejection

COOKIE = "pb_console"
LOGIN_COOKIE = "pb_console_login"  # the sign-in form's CSRF token, before any session
PATH = "/console"
LOGIN = "/console/login"


@dataclass
class Session:
    """One signed-in operator: who, the assertion relayed for their actions, the CSRF token."""

    principal: str
    token: str
    expires_at: datetime
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    notes: list[str] = field(default_factory=list)  # outcomes of actions, shown once

    @property
    def name(self) -> str:
        """``alice`` for ``operator:alice``."""
        return self.principal.split(":", 1)[-1]

    def left_s(self, now: datetime) -> int:
        """Seconds until the session (its assertion) ends."""
        return max(int((self.expires_at - now).total_seconds()), 0)


class Sessions:
    """The sessions of one API process (in memory: a restart signs everyone out)."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, verified: Verified) -> tuple[str, Session]:
        """A new session for a verified operator assertion, and its cookie value."""
        expires = datetime.fromtimestamp(verified.claims.exp, tz=UTC)
        session = Session(verified.principal.id, verified.token, expires)
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = session
        return sid, session

    def get(self, sid: str | None, now: datetime) -> Session | None:
        """The live session of a cookie value (an ended one is forgotten)."""
        if not sid:
            return None
        with self._lock:
            for gone in [k for k, s in self._by_id.items() if s.expires_at <= now]:
                del self._by_id[gone]
            return self._by_id.get(sid)

    def close(self, sid: str | None) -> None:
        """Sign out."""
        with self._lock:
            self._by_id.pop(sid or "", None)


def sessions_of(request: Request) -> Sessions:
    """The app's console sessions."""
    sessions: Sessions = request.app.state.console_sessions
    return sessions


def current(request: Request) -> Session | None:
    """The signed-in operator of this request, or None."""
    return sessions_of(request).get(request.cookies.get(COOKIE), datetime.now(UTC))


def to_login() -> RedirectResponse:
    """Where a request without a session goes."""
    return RedirectResponse(LOGIN, status_code=303)


def csrf_ok(expected: str, given: str | None) -> bool:
    """The form's token is the expected one (constant time); a missing one never is."""
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def verify_login(request: Request, assertion: str) -> Verified | str:
    """The verified operator assertion for the sign-in call, or why not."""
    runtime = runtime_of(request)
    if runtime.identities is None:
        return "the API is still starting"
    verified = runtime.identities.verify(assertion.strip(), datetime.now(UTC), ("POST", LOGIN))
    if isinstance(verified, Rejection):
        return f"{verified.rule}: {verified.detail}"
    if verified.principal.kind != "operator":
        return f"{verified.principal.id} is not an operator (operators.json): only operators " \
               "sign in to the console"
    if not runtime.spend(verified.principal.id, verified.claims):
        return "this assertion was used before: mint a new one"
    return verified


def set_cookie(response: Response, name: str, value: str, max_age: int, secure: bool) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, only under /console."""
    response.set_cookie(name, value, max_age=max_age, path=PATH, httponly=True,
                        samesite="strict", secure=secure)
