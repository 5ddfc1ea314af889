"""Who calls the HTTP API: a verified assertion, never a shared secret or a header. L3.

Imports fastapi, broker (adapters.crypto, identity) and the API's runtime and problems.

Every protected call carries ``Authorization: Bearer <assertion>``: a short-lived JWT (type
``permbroker-api+jwt``) for this method and path, signed by the caller's own key, which is
verified against the trusted files and the registry (``broker.adapters.crypto.assertions``):
operators (``operators.json``), resource services (``services.json``) and agents (their
registered keys). A revoked or unknown key, a forged, expired or misdirected assertion is 401;
a principal that may not do this is 403; a principal over its rate limit is 429 with
Retry-After. An assertion that makes the API act (relayed to Kafka) is spent: used once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.adapters.crypto.assertions import Verified
from broker.api.bodies import AgentIdPath
from broker.api.problems import Refused
from broker.api.runtime import Runtime
from broker.errors import BrokerError
from broker.identity.rules import Principal, Rejection

log = logging.getLogger("permbroker.api")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="permbroker"'}
BEARER = HTTPBearer(
    auto_error=False, scheme_name="assertion", bearerFormat="JWT (permbroker-api+jwt)",
    description="A short-lived assertion signed by the caller's own key: claims iss, aud "
    "(permbroker-api), iat, exp, jti, htm (method) and htu (path); see docs/protocol.md.",
)


def runtime_of(request: Request) -> Runtime:
    """The app's live components."""
    runtime: Runtime = request.app.state.runtime
    return runtime


@dataclass(frozen=True)
class Caller:
    """The verified principal of one call, and the assertion that proved it (to relay)."""

    principal: Principal
    assertion: Verified

    @property
    def name(self) -> str:
        """The principal without its kind prefix (``alice`` for ``operator:alice``)."""
        return self.principal.id.split(":", 1)[-1]


async def caller(request: Request,
                 credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
                 ) -> Caller:
    """The verified caller; 401 without a valid assertion, 429 over the rate limit.

    It runs on the event loop: verifying is CPU work on keys held in memory (the key files are
    re-read only when they change), and a thread hop per dependency cost more than the check."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Refused(401, "no assertion: send Authorization: Bearer <assertion> (a JWT "
                      "signed by your own key; permbroker keys assertion mints one)",
                      kind="unauthenticated", headers=CHALLENGE)
    runtime = runtime_of(request)
    assert runtime.identities is not None
    verified = runtime.identities.verify(credentials.credentials, datetime.now(UTC),
                                         (request.method, request.url.path))
    if isinstance(verified, Rejection):
        raise Refused(401, verified.detail, kind=verified.rule, headers=CHALLENGE)
    retry = runtime.throttle.retry_after(verified.principal.id)
    if retry is not None:
        raise Refused(429, f"{verified.principal.id} is over its rate limit "
                      f"({runtime.throttle.describe()})", kind="rate-limited",
                      headers={"Retry-After": str(retry)})
    return Caller(verified.principal, verified)


Authenticated = Annotated[Caller, Depends(caller)]


def require_operator(who: Authenticated) -> Caller:
    """Operators only."""
    if who.principal.kind != "operator":
        raise Refused(403, f"{who.principal.id} is not an operator (operators.json)",
                      kind="not-permitted")
    return who


async def require_service(who: Authenticated) -> Caller:
    """Resource services (services.json) or operators."""
    if who.principal.kind not in ("service", "operator"):
        raise Refused(403, f"{who.principal.id} is neither a resource service (services.json) "
                      "nor an operator", kind="not-permitted")
    return who


def scoped(request: Request, who: Caller, agent_id: str) -> Caller:
    """The operator or service, if it may see ``agent_id`` (one of other tenants may not)."""
    if runtime_of(request).sees(who.principal.id, agent_id):
        return who
    log.warning("refused %s: agent %s is not of its tenants", who.principal.id, agent_id)
    raise Refused(403, f"{who.principal.id} may not see or act on agent {agent_id}: it is not "
                  "an agent of the tenants it operates", kind="not-permitted")


def operator_of_agent(agent_id: AgentIdPath, request: Request, who: Authenticated) -> Caller:
    """An operator of ``agent_id``'s tenant (or of every tenant)."""
    return scoped(request, require_operator(who), agent_id)


def agent_or_operator(agent_id: AgentIdPath, request: Request, who: Authenticated) -> Caller:
    """The agent ``agent_id`` itself, or an operator of its tenant (reads)."""
    if who.principal.kind == "operator":
        return scoped(request, who, agent_id)
    if who.principal.id == agent_id:
        return who
    raise Refused(403, f"{who.principal.id} may not read agent {agent_id}'s grants: an agent "
                  "reads only its own", kind="not-permitted")


def agent_itself(agent_id: AgentIdPath, who: Authenticated) -> Caller:
    """The agent ``agent_id`` itself: agents act only for themselves."""
    if who.principal.kind == "agent" and who.principal.id == agent_id:
        return who
    raise Refused(403, f"{who.principal.id} may not act as agent {agent_id}: an agent acts "
                  "only for itself, with an assertion signed by its own key",
                  kind="not-permitted")


def spend(request: Request, who: Caller) -> None:
    """Use the caller's assertion up (before the call acts): a second use is refused."""
    runtime = runtime_of(request)
    try:
        first = runtime.spend(who.principal.id, who.assertion.claims)
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Redis up?)", kind="unavailable") from exc
    if not first:
        raise Refused(401, f"assertion {who.assertion.claims.jti} was used before; mint a new "
                      "one for each call", kind="identity:replay", headers=CHALLENGE)


Operator = Annotated[Caller, Depends(require_operator)]
OperatorOfAgent = Annotated[Caller, Depends(operator_of_agent)]
Service = Annotated[Caller, Depends(require_service)]
AgentOrOperator = Annotated[Caller, Depends(agent_or_operator)]
AgentItself = Annotated[Caller, Depends(agent_itself)]
