"""Grant token claims (pure): what a token for one grant and one resource service says.

Imports schemas and broker.identity; time is an argument, no crypto (the adapters sign and
verify). A token names one audience, the resource service, and carries only the grant's scopes
of that service's namespace (``payments`` for ``payments:accounts.freeze``), so a token shown to
one service is useless at another. ``exp`` is never later than the grant's own expiry nor than
``max_ttl_s`` after issue; ``jti`` is the grant id, which verifiers check for revocation.
A delegated grant's token carries an RFC 8693 ``act`` claim naming its delegator, with the
delegator's own delegator nested inside (``{"sub": B, "act": {"sub": A}}``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.identity.rules import Reason, Rejection
from schemas.events import GrantIssued


def namespace(scope: str) -> str:
    """The resource service a scope belongs to: the part before the colon."""
    return scope.split(":", 1)[0]


def token_claims(grant: GrantIssued, audience: str, *, issuer: str, now: datetime,
                 max_ttl_s: int) -> dict[str, object] | Rejection:
    """The claims of a token for ``grant`` at ``audience``, or why none can be issued."""
    scopes = [s for s in grant.scopes if namespace(s) == audience]
    if not scopes:
        held = ", ".join(sorted({namespace(s) for s in grant.scopes}))
        return Rejection(Reason.INVALID, f"grant {grant.grant_id} has no scope for audience "
                         f"{audience!r} (its scopes are for: {held})")
    iat = math.floor(now.timestamp())
    exp = min(math.floor(grant.expires_at.timestamp()), iat + max_ttl_s)
    if exp <= iat:
        return Rejection(Reason.INVALID, f"grant {grant.grant_id} expires at "
                         f"{grant.expires_at.isoformat()}; too late for a token")
    return {
        "iss": issuer, "aud": audience, "sub": grant.agent_id, "jti": grant.grant_id,
        "scope": " ".join(scopes), "resources": list(grant.resources),
        "iat": iat, "nbf": iat, "exp": exp,
        "model": {"version": grant.model_version, "digest": grant.model_digest},
        "policy_revision": grant.policy_revision,
        **({"act": act_claim(grant.delegators)} if grant.delegators else {}),
    }


def act_claim(delegators: tuple[str, ...]) -> dict[str, object]:
    """The RFC 8693 ``act`` claim of a delegation chain (nearest delegator outermost)."""
    claim: dict[str, object] = {"sub": delegators[-1]}
    for agent in reversed(delegators[:-1]):
        claim = {"sub": agent, "act": claim}
    return claim


def act_chain(claim: object) -> tuple[str, ...] | None:
    """The delegators an ``act`` claim names, nearest first; None when it is malformed."""
    chain: list[str] = []
    while claim is not None:
        if not isinstance(claim, dict) or not isinstance(claim.get("sub"), str) \
                or len(chain) >= MAX_ACT_DEPTH:
            return None
        chain.append(claim["sub"])
        claim = claim.get("act")
    return tuple(chain)


MAX_ACT_DEPTH = 16  # a longer chain is refused as malformed


@dataclass(frozen=True)
class GrantClaims:
    """A verified grant token, as a resource service uses it."""

    agent_id: str
    grant_id: str
    audience: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    kid: str
    delegators: tuple[str, ...] = ()  # the ``act`` chain: who delegated, nearest first

    def allows(self, scope: str, resource: str = "") -> bool:
        """Does this token cover ``scope`` on ``resource`` (any resource if it names none)?"""
        return scope in self.scopes and (not self.resources or resource in self.resources)


def grant_claims(data: dict[str, object], kid: str) -> GrantClaims | Rejection:
    """Typed claims from a verified token's payload, or why they are malformed."""
    scope, resources = data.get("scope"), data.get("resources", [])
    times = [data.get(name) for name in ("iat", "exp")]
    texts = [data.get(name) for name in ("sub", "jti", "aud")]
    if not isinstance(scope, str) or not isinstance(resources, list) or not all(
            isinstance(t, int | float) for t in times) or not all(
            isinstance(t, str) and t for t in texts):
        return Rejection(Reason.MALFORMED, "grant token claims have the wrong types")
    delegators = act_chain(data.get("act"))
    if delegators is None:
        return Rejection(Reason.MALFORMED, "grant token's act claim is malformed")
    iat, exp = (datetime.fromtimestamp(float(t), tz=UTC) for t in times)  # type: ignore[arg-type]
    return GrantClaims(agent_id=str(texts[0]), grant_id=str(texts[1]), audience=str(texts[2]),
                       scopes=tuple(scope.split()), resources=tuple(str(r) for r in resources),
                       issued_at=iat, expires_at=exp, kid=kid, delegators=delegators)
