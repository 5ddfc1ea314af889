"""Resource side: verify a grant token the way a careful service must. Imports adapters, schemas.

The verifier trusts only keys from the published JWKS (``JwksView``, or a JWK Set it is given):
it pins the algorithms, refuses ``alg: none``, HMAC, any ``jku``/``x5u``/``jwk``/``x5c`` header
(never fetched) and any ``kid`` that is not a plain key id; checks ``typ``, ``iss``, ``aud``,
``exp``/``nbf``/``iat`` with a small leeway and the token's lifetime; and, given a grant view,
refuses a token whose grant was revoked, released or has expired, well before ``exp``. Its
``now`` never lags the broker's time as the grant log proves it (``TimeFloor``): a local clock
running behind does not stretch a token's life.
Every refusal is a ``TokenRejected`` with a stable ``code`` and a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import jwt

from broker.adapters.crypto.jose import algorithm_of, load_public, unverified_header
from broker.errors import IdentityError, TokenRejected
from broker.identity.rules import Rejection
from broker.identity.tokens import GrantClaims, grant_claims
from schemas.events import KID_PATTERN, PublicJwk
from schemas.signing import GRANT_CLAIMS, GRANT_TOKEN_TYPE, SIGNING_ALGORITHMS

MAX_TOKEN_BYTES = 8192
REFUSED_HEADERS = ("jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit")


class KeySource(Protocol):
    """Where verification keys come from: only published keys, looked up by kid."""

    def get(self, kid: str) -> PublicJwk | None:
        """The published key with this kid."""


class GrantStates(Protocol):
    """What the grant lifecycle topic says about a grant (``GrantView`` implements it)."""

    def grant_state(self, agent_id: str, grant_id: str) -> str:
        """'active', 'ended', 'unknown' or 'not-ready'."""


@runtime_checkable
class TimeFloor(Protocol):
    """A time the broker has certainly reached (``GrantView`` implements it from the log)."""

    def time_floor(self) -> datetime | None:
        """None before anything was read."""


class StaticKeys:
    """Keys from a JWK Set document (e.g. a served jwks.json); nothing is ever fetched."""

    def __init__(self, jwks: Mapping[str, object]) -> None:
        items = jwks.get("keys", [])
        keys = [PublicJwk.model_validate(k) for k in items] if isinstance(items, list) else []
        self._keys = {k.kid: k for k in keys if k.kid}

    def get(self, kid: str) -> PublicJwk | None:
        """The key with this kid."""
        return self._keys.get(kid)


class GrantTokenVerifier:
    """Verifies grant tokens for one resource service (its ``audience``)."""

    def __init__(self, keys: KeySource, *, audience: str, issuer: str = "permbroker",
                 grants: GrantStates | None = None, leeway_s: int = 5, max_ttl_s: int = 60,
                 algorithms: Iterable[str] = SIGNING_ALGORITHMS) -> None:
        self._keys = keys
        self.audience = audience
        self.issuer = issuer
        self._grants = grants
        self._leeway = timedelta(seconds=leeway_s)
        self._max_ttl = timedelta(seconds=max_ttl_s)
        self._algorithms = frozenset(algorithms) & frozenset(SIGNING_ALGORITHMS)

    def verify(self, token: str, now: datetime | None = None) -> GrantClaims:
        """The token's grant if it is valid now; TokenRejected(code, detail) otherwise."""
        kid, jwk = self._key_for(token)
        alg = algorithm_of(jwk)
        try:
            data = jwt.decode(token, load_public(jwk), algorithms=[alg], audience=self.audience,
                              issuer=self.issuer, options={
                                  "require": list(GRANT_CLAIMS), "verify_exp": False,
                                  "verify_nbf": False, "verify_iat": False})
        except jwt.InvalidAudienceError:
            raise TokenRejected("wrong-aud", f"token is not for {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("wrong-iss", f"token was not issued by {self.issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise TokenRejected("bad-signature", f"signature does not verify with {kid}") from None
        except jwt.PyJWTError as exc:
            raise TokenRejected("invalid", str(exc)) from None
        claims = grant_claims(data, kid)
        if isinstance(claims, Rejection):
            raise TokenRejected("invalid", claims.detail)
        self._check_times(data, claims, self._now(now))
        self._check_grant(claims)
        return claims

    def _now(self, now: datetime | None) -> datetime:
        """The local time, never earlier than what the grant log proves the broker reached:
        a verifier whose clock runs behind does not honour expired tokens for longer."""
        local = now or datetime.now(UTC)
        floor = self._grants.time_floor() if isinstance(self._grants, TimeFloor) else None
        return max(local, floor) if floor is not None else local

    def _key_for(self, token: str) -> tuple[str, PublicJwk]:
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise TokenRejected("malformed", "not a compact JWS")
        try:
            header = unverified_header(token)
        except IdentityError as exc:
            raise TokenRejected("malformed", str(exc)) from None
        if header.get("typ") != GRANT_TOKEN_TYPE:
            raise TokenRejected("wrong-typ", f"typ {header.get('typ')!r} is not "
                                f"{GRANT_TOKEN_TYPE!r}")
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise TokenRejected("alg-not-allowed", f"alg {alg!r} is not one of "
                                f"{', '.join(sorted(self._algorithms))}")
        refused = [h for h in REFUSED_HEADERS if h in header]
        if refused:
            raise TokenRejected("header-not-accepted", f"header {', '.join(refused)} refused: "
                                "keys come only from the published JWKS, nothing is fetched")
        kid = header.get("kid")
        if not isinstance(kid, str) or re.fullmatch(KID_PATTERN, kid) is None:
            raise TokenRejected("bad-kid", "kid missing or not a plain key id")
        jwk = self._keys.get(kid)
        if jwk is None:
            raise TokenRejected("unknown-kid", f"no published key {kid} (retired, or never ours)")
        if algorithm_of(jwk) != alg:
            raise TokenRejected("alg-not-allowed", f"key {kid} is not a {alg} key")
        return kid, jwk

    def _check_times(self, data: dict[str, object], claims: GrantClaims, now: datetime) -> None:
        nbf = data.get("nbf")
        if not isinstance(nbf, int | float):
            raise TokenRejected("invalid", "nbf is not a number")
        if now >= claims.expires_at + self._leeway:
            raise TokenRejected("expired", f"token expired at {claims.expires_at.isoformat()}")
        if now < datetime.fromtimestamp(nbf, tz=UTC) - self._leeway:
            raise TokenRejected("not-yet-valid", f"token not valid before nbf {nbf}")
        if now < claims.issued_at - self._leeway:
            raise TokenRejected("not-yet-valid", "token issued in the future (iat)")
        if claims.expires_at - claims.issued_at > self._max_ttl + self._leeway:
            raise TokenRejected("lifetime-too-long", "token lives longer than a grant token may")

    def _check_grant(self, claims: GrantClaims) -> None:
        if self._grants is None:
            return
        state = self._grants.grant_state(claims.agent_id, claims.grant_id)
        if state == "ended":
            raise TokenRejected("grant-ended", f"grant {claims.grant_id} was revoked, released "
                                "or has expired")
        if state != "active":
            raise TokenRejected("grant-unknown", f"grant {claims.grant_id} is not an active "
                                f"grant in this service's view ({state}); fail closed")
