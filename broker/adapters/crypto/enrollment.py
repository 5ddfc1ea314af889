"""Enrollment tokens: an operator lets one agent register its own key. Imports pyjwt via jose.

Also imports schemas, broker.identity/registry. The token is a JWT of type
``permbroker-enroll+jwt`` signed by an operator key the workers trust; it names the agent
(``sub``), carries the profile the operator approved and expires (default one hour). The agent
publishes a ``register`` command with its new public key, signed by that key, and the token.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import jwt
from pydantic import ValidationError

from broker.adapters.crypto.jose import SigningKey, algorithm_of, load_public, unverified_header
from broker.errors import IdentityError
from broker.identity.registry import Enrollment
from broker.identity.rules import Reason, Rejection
from schemas.events import AgentProfile, PublicJwk
from schemas.signing import BROKER_AUDIENCE, ENROLLMENT_TOKEN_TYPE


def issue_enrollment(key: SigningKey, principal: str, profile: AgentProfile, *, now: datetime,
                     ttl_s: int = 3600) -> tuple[str, datetime]:
    """A signed enrollment token for ``profile`` and when it expires."""
    exp = now + timedelta(seconds=ttl_s)
    claims = {"iss": principal, "aud": BROKER_AUDIENCE, "sub": profile.agent_id,
              "jti": secrets.token_urlsafe(12), "iat": int(now.timestamp()),
              "exp": int(exp.timestamp()),
              "profile": profile.model_dump(mode="json", exclude={"baseline", "ceiling"})}
    return key.sign_jwt(claims, ENROLLMENT_TOKEN_TYPE), exp


def verify_enrollment(token: str, operators: dict[str, tuple[str, PublicJwk]],
                      now: datetime) -> Enrollment | Rejection:
    """The enrollment's claims if an operator we trust signed it and it has not expired."""
    try:
        header = unverified_header(token)
    except IdentityError as exc:
        return Rejection(Reason.NOT_PERMITTED, f"enrollment token malformed: {exc}")
    kid = header.get("kid")
    if header.get("typ") != ENROLLMENT_TOKEN_TYPE or not isinstance(kid, str) \
            or kid not in operators:
        return Rejection(Reason.NOT_PERMITTED, "enrollment token is not signed by a trusted "
                         "operator key")
    principal, jwk = operators[kid]
    try:
        data = jwt.decode(token, load_public(jwk), algorithms=[algorithm_of(jwk)],
                          audience=BROKER_AUDIENCE, issuer=principal,
                          options={"require": ["exp", "sub", "jti", "iss"],
                                   "verify_exp": False})
        profile = AgentProfile.model_validate(data.get("profile"))
    except (jwt.PyJWTError, ValidationError) as exc:
        return Rejection(Reason.NOT_PERMITTED, f"enrollment token invalid: {exc}")
    if now.timestamp() >= float(data["exp"]):
        return Rejection(Reason.NOT_PERMITTED, "enrollment token expired; ask an operator for a "
                         "new one (permbroker agents enroll)")
    if profile.agent_id != data["sub"]:
        return Rejection(Reason.NOT_PERMITTED, "enrollment token's profile is of another agent")
    return Enrollment(jti=str(data["jti"]), issuer=principal, agent_id=str(data["sub"]),
                      profile=profile)
