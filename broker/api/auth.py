"""Bearer-token authentication of the HTTP API. Imports fastapi, broker.config.

Three kinds of caller, each with tokens from the settings (until the identity work issues
signed agent credentials): operators (``PERMBROKER_API_OPERATOR_TOKEN``), resource services
calling ``/v1/check`` (``PERMBROKER_API_SERVICE_TOKEN``) and agents
(``PERMBROKER_API_AGENT_TOKENS``, a JSON object agent id -> token). An agent's token only works
for its own agent id: agents act only for themselves. A kind whose token is unset is disabled
(503 saying which variable to set), never open.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request
from pydantic import SecretStr

from broker.config import Settings

CHALLENGE = {"WWW-Authenticate": "Bearer"}


def bearer(request: Request) -> str:
    """The bearer token of the request, or 401."""
    value = request.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                            headers=CHALLENGE)
    return token.strip()


def _matches(token: str, secrets: Iterable[SecretStr | None]) -> bool:
    return any(
        s is not None and hmac.compare_digest(token.encode(), s.get_secret_value().encode())
        for s in secrets
    )


def settings_of(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def require_operator(request: Request) -> str:
    """Operators only; returns who (the X-Permbroker-Operator header, for the audit)."""
    settings = settings_of(request)
    if settings.api_operator_token is None:
        raise HTTPException(503, "operator endpoints are disabled: set "
                            "PERMBROKER_API_OPERATOR_TOKEN")
    if not _matches(bearer(request), [settings.api_operator_token]):
        raise HTTPException(403, "not an operator token", headers=CHALLENGE)
    return request.headers.get("x-permbroker-operator", "api-operator")[:64]


def require_service(request: Request) -> None:
    """Resource services (or operators)."""
    settings = settings_of(request)
    if settings.api_service_token is None and settings.api_operator_token is None:
        raise HTTPException(503, "check endpoint disabled: set PERMBROKER_API_SERVICE_TOKEN")
    if not _matches(bearer(request), [settings.api_service_token, settings.api_operator_token]):
        raise HTTPException(403, "not a service or operator token", headers=CHALLENGE)


def require_agent(request: Request, agent_id: str, *, operator_ok: bool = False) -> None:
    """The agent ``agent_id`` itself (and, for reads, an operator)."""
    settings = settings_of(request)
    token = bearer(request)
    if operator_ok and _matches(token, [settings.api_operator_token]):
        return
    own = settings.api_agent_tokens.get(agent_id)
    if own is None or not _matches(token, [own]):
        raise HTTPException(
            403, f"this token does not belong to agent {agent_id}: an agent acts only for "
            "itself (agent tokens: PERMBROKER_API_AGENT_TOKENS)", headers=CHALLENGE,
        )
