"""FastAPI dependency for resource services: ``require_scope``. Imports fastapi, sdk.enforce.

    app.state.grant_view = GrantView(bootstrap, topic="permbroker.grants.payments")

    @app.post("/accounts/{account_id}/freeze")
    def freeze(account_id: str,
               verdict: Verdict = Depends(require_scope("payments:accounts.freeze",
                                                        resource="{account_id}"))):
        ...

The view comes from ``view=`` or ``request.app.state.grant_view``; the caller from ``identify``
(default: the ``X-Permbroker-Agent`` header, see ``broker.sdk.resource.enforce``); an
``X-Permbroker-Consistency`` header is passed on as ``at_least``. A denial is an HTTP 403 (503
when the view cannot vouch for its freshness) whose JSON detail and ``X-Permbroker-Deny-Reason``
header carry the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request

from broker.sdk.resource.enforce import (
    AGENT_HEADER,
    REASON_HEADER,
    TOKEN_HEADER,
    Checker,
    check,
    denial_body,
    status_for,
)
from broker.sdk.resource.index import Verdict


def agent_from_request(request: Request) -> str | None:
    """The default identity: the X-Permbroker-Agent header."""
    return request.headers.get(AGENT_HEADER)


def require_scope(
    scope: str,
    *,
    resource: str | Callable[[Request], str] = "",
    view: Checker | None = None,
    identify: Callable[[Request], str | None] = agent_from_request,
) -> Callable[[Request], Verdict]:
    """A dependency that lets the request through only if the caller holds ``scope``.

    ``resource`` is a literal, a template over the path parameters (``"{account_id}"``), or a
    function of the request.
    """

    def dependency(request: Request) -> Verdict:
        target = (
            resource(request) if callable(resource)
            else resource.format(**request.path_params)
        )
        checker = view if view is not None else request.app.state.grant_view
        agent = identify(request)
        verdict = check(checker, agent, scope, target,
                        at_least=request.headers.get(TOKEN_HEADER))
        if not verdict.allowed:
            headers = {REASON_HEADER: verdict.reason.encode("latin-1", "replace").decode()}
            if verdict.unavailable:
                headers["Retry-After"] = "1"
            raise HTTPException(
                status_for(verdict), detail=denial_body(verdict, agent, scope, target),
                headers=headers,
            )
        return verdict

    return dependency
