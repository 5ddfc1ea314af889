"""Enforcement helpers for resource services: ``check``, ``enforce``, an ASGI middleware.

Imports core, sdk.grant_index and stdlib (no web framework: the FastAPI dependency lives in
broker.sdk.resource.fastapi_deps). Every denial carries its reason. A denial because the view cannot
vouch for its freshness is *unavailable* (HTTP 503: retry later), any other is *forbidden* (403).

Who the caller is comes from ``identify``; the default reads the ``X-Permbroker-Agent`` header,
which is only as trustworthy as whatever sits in front of the service (an authenticating proxy,
mTLS, or the agent tokens of the identity work): pass your own ``identify`` otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from broker.delivery.consistency import ConsistencyToken
from broker.errors import AccessDenied
from broker.sdk.resource.index import Verdict

AGENT_HEADER = "x-permbroker-agent"
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


def check(
    view: Checker, agent_id: str | None, scope: str, resource: str = "", *,
    at_least: ConsistencyToken | str | None = None,
) -> Verdict:
    """Framework-free check: the view's verdict; an unknown caller is denied."""
    if not agent_id:
        return Verdict(False, "no agent identity on the request (fail closed)")
    return view.allows(agent_id, scope, resource, at_least=at_least)


def enforce(
    view: Checker, agent_id: str | None, scope: str, resource: str = "", *,
    at_least: ConsistencyToken | str | None = None,
) -> Verdict:
    """Like ``check`` but raises ``AccessDenied`` (with the reason) instead of returning no."""
    verdict = check(view, agent_id, scope, resource, at_least=at_least)
    if not verdict.allowed:
        raise AccessDenied(verdict.reason, agent_id=agent_id or "?", scope=scope,
                           resource=resource)
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
    """The default identity: the X-Permbroker-Agent header (see the module docstring)."""
    return header(scope, AGENT_HEADER)


class GrantMiddleware:
    """ASGI middleware: requests matching a rule pass only if the view allows them."""

    def __init__(
        self, app: ASGIApp, *, view: Checker | Callable[[], Checker], rules: Sequence[Rule],
        identify: Callable[[Scope], str | None] = agent_from_scope,
        deny_unmatched: bool = False,
    ) -> None:
        self.app = app
        self._view = view
        self._rules = tuple(rules)
        self._identify = identify
        self._deny_unmatched = deny_unmatched

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
        agent = self._identify(scope)
        verdict = check(view, agent, rule.scope, resource, at_least=header(scope, TOKEN_HEADER))
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        await _respond(send, status_for(verdict), denial_body(verdict, agent, rule.scope, resource),
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
