"""Enforcement helpers for resource services: ``check``, ``enforce``, an ASGI middleware.

Imports core, sdk (the grant index, the token verifier's errors) and stdlib (no web framework:
the FastAPI dependency lives in ``broker.sdk.resource.fastapi_deps``). Every denial carries its
reason. A denial because the view cannot vouch for its freshness is *unavailable* (HTTP 503:
retry later), any other is *forbidden* (403).

Who the caller is, is proven, by default: the request carries a grant token
(``Authorization: Bearer <grant token>``, obtained by the agent with
``AgentClient.grant_token``) that the service's ``GrantTokenVerifier`` verifies; the token's
subject is the caller, and the view then decides the scope. ``header_identity=True`` switches
to the ``X-Permbroker-Agent`` header instead, which is only as trustworthy as whatever sits in
front of the service: use it only in a trusted mesh (an authenticating proxy, mTLS) that sets
the header itself. A custom ``identify`` is the caller's own responsibility.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from broker.delivery.consistency import ConsistencyToken
from broker.errors import AccessDenied, TokenRejected
from broker.identity.tokens import GrantClaims
from broker.sdk.resource.index import Verdict

AGENT_HEADER = "x-permbroker-agent"
AUTHORIZATION = "authorization"
TOKEN_HEADER = "x-permbroker-consistency"  # noqa: S105 - a header name, not a secret
REASON_HEADER = "x-permbroker-deny-reason"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@runtime_checkable
class Checker(Protocol):
    """What enforcement needs of a view (``GrantView`` satisfies it)."""

    def allows(
        self, agent_id: str, scope: str, resource: str = "", now: Any = None, *,
        at_least: ConsistencyToken | str | None = None,
    ) -> Verdict: ...


class TokenVerifier(Protocol):
    """What identity by proof needs (``GrantTokenVerifier`` satisfies it)."""

    def verify(self, token: str) -> GrantClaims:
        """The token's grant; raises TokenRejected when it is not valid now."""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from (``agent_id``), or why nobody (``reason``)."""

    agent_id: str | None
    reason: str = ""


def by_token(verifier: TokenVerifier, token: str | None) -> Caller:
    """The agent a grant token proves, or why it proves no one (fail closed)."""
    if not token:
        return Caller(None, "no grant token on the request (Authorization: Bearer <grant "
                      "token>); fail closed")
    try:
        return Caller(verifier.verify(token).agent_id)
    except TokenRejected as exc:
        return Caller(None, f"grant token refused ({exc.code}): {exc}; fail closed")


def bearer_of(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value."""
    scheme, _, token = (value or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def check(
    view: Checker, token: str | None, scope: str, resource: str = "", *,
    verifier: TokenVerifier, at_least: ConsistencyToken | str | None = None,
) -> Verdict:
    """Framework-free check of the caller presenting grant ``token``: identity by proof, then
    the view's verdict; no token, or one that does not verify, is a denial with the reason."""
    caller = by_token(verifier, token)
    if caller.agent_id is None:
        return Verdict(False, caller.reason)
    return view.allows(caller.agent_id, scope, resource, at_least=at_least)


def check_agent(
    view: Checker, agent_id: str | None, scope: str, resource: str = "", *,
    at_least: ConsistencyToken | str | None = None,
) -> Verdict:
    """The view's verdict for an agent whose identity was established elsewhere (a trusted mesh,
    or a resource service asking about an agent); an unknown caller is denied."""
    if not agent_id:
        return Verdict(False, "no agent identity on the request (fail closed)")
    return view.allows(agent_id, scope, resource, at_least=at_least)


def enforce(
    view: Checker, token: str | None, scope: str, resource: str = "", *,
    verifier: TokenVerifier, at_least: ConsistencyToken | str | None = None,
) -> Verdict:
    """Like ``check`` but raises ``AccessDenied`` (with the reason) instead of returning no."""
    verdict = check(view, token, scope, resource, verifier=verifier, at_least=at_least)
    if not verdict.allowed:
        raise AccessDenied(verdict.reason, agent_id="?", scope=scope, resource=resource)
    return verdict


def status_for(verdict: Verdict) -> int:
    """403 for a denial on the merits, 503 when the view cannot answer yet (fail closed)."""
    if verdict.allowed:
        return 200
    return 503 if verdict.unavailable else 403


def denial_body(
    verdict: Verdict, agent_id: str | None, scope: str, resource: str
) -> dict[str, Any]:
    """The JSON body of a denial."""
    return {"allowed": False, "reason": verdict.reason, "agent_id": agent_id, "scope": scope,
            "resource": resource}


@dataclass(frozen=True)
class Rule:
    """Requests whose method and path match need ``scope`` on ``resource``.

    ``path`` is a regular expression matched against the whole path; its named groups fill the
    ``resource`` template: ``Rule("POST", r"/accounts/(?P<account>[^/]+)/freeze",
    "payments:accounts.freeze", "{account}")``.
    """

    method: str
    path: str
    scope: str
    resource: str = ""

    def match(self, method: str, path: str) -> str | None:
        """The resource when this rule applies to the request, else None."""
        if method.upper() != self.method.upper():
            return None
        found = re.fullmatch(self.path, path)
        return self.resource.format(**found.groupdict()) if found else None


def header(scope: Scope, name: str) -> str | None:
    """One request header of an ASGI scope (lower-case name)."""
    for key, value in scope.get("headers", ()):
        if key.decode("latin-1").lower() == name:
            return str(value.decode("latin-1"))
    return None


def agent_from_scope(scope: Scope) -> str | None:
    """Header identity: the X-Permbroker-Agent header (trusted meshes only; see above)."""
    return header(scope, AGENT_HEADER)


def identity_mode(verifier: object, identify: object, header_identity: bool) -> None:
    """Refuse an ambiguous or missing choice of how callers are identified."""
    if header_identity and identify is not None:
        raise ValueError("pass identify= or header_identity=True, not both")
    if verifier is None and identify is None and not header_identity:
        raise ValueError("callers are identified by a grant token: pass verifier= (this "
                         "service's GrantTokenVerifier), or header_identity=True in a trusted "
                         "mesh that sets X-Permbroker-Agent itself")


class GrantMiddleware:
    """ASGI middleware: requests matching a rule pass only if the caller holds the rule's scope.

    The caller is the subject of the request's grant token (``verifier``), unless
    ``header_identity=True`` (the X-Permbroker-Agent header) or a custom ``identify``.
    """

    def __init__(
        self, app: ASGIApp, *, view: Checker | Callable[[], Checker], rules: Sequence[Rule],
        verifier: TokenVerifier | None = None,
        identify: Callable[[Scope], str | None] | None = None,
        header_identity: bool = False, deny_unmatched: bool = False,
    ) -> None:
        identity_mode(verifier, identify, header_identity)
        self.app = app
        self._view = view
        self._rules = tuple(rules)
        self._verifier = verifier
        self._identify = agent_from_scope if header_identity else identify
        self._deny_unmatched = deny_unmatched

    def _caller(self, scope: Scope) -> Caller:
        if self._identify is not None:
            return Caller(self._identify(scope), "no agent identity on the request (fail closed)")
        assert self._verifier is not None
        return by_token(self._verifier, bearer_of(header(scope, AUTHORIZATION)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for rule in self._rules:
            resource = rule.match(scope["method"], scope["path"])
            if resource is not None:
                break
        else:
            if self._deny_unmatched:
                await _respond(send, 403, {"allowed": False, "reason": "no rule covers "
                                           f"{scope['method']} {scope['path']} (deny unmatched)"})
                return
            await self.app(scope, receive, send)
            return
        view = self._view if isinstance(self._view, Checker) else self._view()
        caller = self._caller(scope)
        verdict = check_agent(view, caller.agent_id, rule.scope, resource,
                              at_least=header(scope, TOKEN_HEADER)) \
            if caller.agent_id else Verdict(False, caller.reason)
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        await _respond(send, status_for(verdict),
                       denial_body(verdict, caller.agent_id, rule.scope, resource),
                       {REASON_HEADER: verdict.reason})


async def _respond(
    send: Send, status: int, body: Mapping[str, Any], extra: Mapping[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(payload)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    for name, value in (extra or {}).items():
        headers.append((name.encode(), value.encode("latin-1", errors="replace")[:1024]))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
