"""FastAPI dependency for resource services: ``require_scope``. Imports fastapi, sdk.enforce.

    keys = JwksView.from_settings(settings, kafka)  # the broker's chain of trust (its anchor)
    app.state.grant_view = GrantView(kafka, trust=keys.trust, topic="permbroker.grants.payments")
    app.state.grant_verifier = GrantTokenVerifier(keys, audience="payments",
                                                  grants=app.state.grant_view)

    @app.post("/accounts/{account_id}/freeze")
    def freeze(account_id: str,
               verdict: Verdict = Depends(require_scope("payments:accounts.freeze",
                                                        resource="{account_id}"))):
        ...

The view comes from ``view=`` or ``request.app.state.grant_view``. The caller is the subject of
the request's grant token (``Authorization: Bearer <grant token>``), verified by ``verifier=``
or ``request.app.state.grant_verifier``; ``header_identity=True`` reads the
``X-Permbroker-Agent`` header instead (trusted meshes only, see ``broker.sdk.resource.enforce``)
and ``identify=`` is a function of your own. An ``X-Permbroker-Consistency`` header is passed
on as ``at_least``. A denial is an HTTP 403 (503 when the view cannot vouch for its freshness)
whose JSON detail and ``X-Permbroker-Deny-Reason`` header carry the reason.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException, Request

from broker.sdk.resource.enforce import (
    AGENT_HEADER,
    AUTHORIZATION,
    REASON_HEADER,
    TOKEN_HEADER,
    Caller,
    Checker,
    TokenVerifier,
    bearer_of,
    by_token,
    check_agent,
    denial_body,
    status_for,
)
from broker.sdk.resource.index import Verdict


def agent_from_request(request: Request) -> str | None:
    """Header identity: the X-Permbroker-Agent header (trusted meshes only)."""
    return request.headers.get(AGENT_HEADER)


def _caller(request: Request, verifier: TokenVerifier | None,
            identify: Callable[[Request], str | None] | None) -> Caller:
    if identify is not None:
        return Caller(identify(request), "no agent identity on the request (fail closed)")
    found = verifier or getattr(request.app.state, "grant_verifier", None)
    if found is None:
        return Caller(None, "this service has no grant-token verifier (app.state."
                      "grant_verifier); fail closed")
    return by_token(found, bearer_of(request.headers.get(AUTHORIZATION)))


def require_scope(
    scope: str,
    *,
    resource: str | Callable[[Request], str] = "",
    view: Checker | None = None,
    verifier: TokenVerifier | None = None,
    identify: Callable[[Request], str | None] | None = None,
    header_identity: bool = False,
) -> Callable[[Request], Verdict]:
    """A dependency that lets the request through only if the caller holds ``scope``.

    ``resource`` is a literal, a template over the path parameters (``"{account_id}"``), or a
    function of the request. The caller is proven by a grant token unless ``header_identity``
    or ``identify`` says otherwise.
    """
    if header_identity and identify is not None:
        raise ValueError("pass identify= or header_identity=True, not both")
    who = agent_from_request if header_identity else identify

    def dependency(request: Request) -> Verdict:
        target = (
            resource(request) if callable(resource)
            else resource.format(**request.path_params)
        )
        checker = view if view is not None else request.app.state.grant_view
        caller = _caller(request, verifier, who)
        verdict = check_agent(checker, caller.agent_id, scope, target,
                              at_least=request.headers.get(TOKEN_HEADER)) \
            if caller.agent_id else Verdict(False, caller.reason)
        if not verdict.allowed:
            headers = {REASON_HEADER: verdict.reason.encode("latin-1", "replace").decode()}
            if verdict.unavailable:
                headers["Retry-After"] = "1"
            raise HTTPException(
                status_for(verdict), detail=denial_body(verdict, caller.agent_id, scope, target),
                headers=headers,
            )
        return verdict

    return dependency
