"""API assertions: the short-lived JWTs principals present to the HTTP API. Imports pyjwt, jose.

Also imports schemas, broker.identity and errors. An assertion is a compact JWS of type
``permbroker-api+jwt`` signed by the caller's own key (an operator's from ``operators.json``, a
resource service's from ``services.json``, an agent's registered key), with the claims ``iss``
(the principal), ``aud`` (``permbroker-api``), ``iat``/``exp`` (a short life), ``jti`` (a nonce:
used once), ``htm`` and ``htu`` (the HTTP method and path it was made for). There is no shared
secret: the API verifies the signature with the registered public key. When the API relays a
call to Kafka it forwards the assertion (header ``pb_assertion``), and the worker verifies it
again, so a relayed request is judged as its principal's own (``docs/protocol.md`` section 11).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from broker.adapters.crypto.jose import SigningKey, compact_header, verify_compact
from broker.identity.rules import (
    AssertionClaims,
    Principal,
    Reason,
    Rejection,
    agent_usable,
    assertion_problem,
    find_key,
    key_usable,
)
from schemas.events import AgentRecord, PublicJwk
from schemas.signing import API_ASSERTION_TYPE, API_AUDIENCE, ASSERTION_CLAIMS

MAX_ASSERTION_BYTES = 4096
DEFAULT_LIFE_S = 30


def mint(key: SigningKey, principal: str, method: str, path: str, *,
         now: datetime | None = None, ttl_s: int = DEFAULT_LIFE_S) -> str:
    """An assertion by ``principal`` (signed with its ``key``) for one call: ``method path``."""
    iat = int((now or datetime.now(UTC)).timestamp())
    claims = {"iss": principal, "aud": API_AUDIENCE, "iat": iat, "exp": iat + ttl_s,
              "jti": secrets.token_urlsafe(16), "htm": method.upper(), "htu": path}
    return key.sign_jwt(claims, API_ASSERTION_TYPE)


class Directory(Protocol):
    """Public keys by kid with their principal (``OperatorDirectory``, ``ServiceDirectory``)."""

    def held(self, kid: str) -> tuple[str, PublicJwk] | None:
        """(principal, key) of a key id among those held now (the file is not re-read)."""

    def get(self, kid: str) -> tuple[str, PublicJwk] | None:
        """(principal, key) of a key id (the file is re-read when it is not held)."""


class Agents(Protocol):
    """The agent registry (``RegistryView``)."""

    def get(self, agent_id: str) -> AgentRecord | None:
        """The latest record of an agent."""

    def owner_of(self, kid: str) -> str | None:
        """The agent a key id was registered to."""


@dataclass(frozen=True)
class Verified:
    """An assertion that verified: who made it, its claims and the token itself (to relay)."""

    principal: Principal
    claims: AssertionClaims
    token: str


@dataclass
class Identities:
    """Finds the key an assertion names (operators, services, agents) and verifies it."""

    operators: Directory
    services: Directory
    agents: Agents
    max_life_s: int
    leeway_s: int
    refresh: Callable[[], object] | None = None  # catch the registry up on an unknown kid

    def verify(self, token: str, at: datetime,
               call: tuple[str, str] | None = None) -> Verified | Rejection:
        """The verified assertion, or why not (``call``: the method and path it must be for)."""
        head = _header(token)
        if isinstance(head, Rejection):
            return head
        kid, alg = head
        found = self.key(kid, at)
        if isinstance(found, Rejection):
            return found
        principal, jwk = found
        claims = _decode(token, kid, alg, jwk)
        if isinstance(claims, Rejection):
            return claims
        problem = assertion_problem(claims, principal.id, at, max_life_s=self.max_life_s,
                                    leeway_s=self.leeway_s, call=call)
        return problem or Verified(principal, claims, token)

    def key(self, kid: str, at: datetime) -> tuple[Principal, PublicJwk] | Rejection:
        """The principal and public key of ``kid``; an agent's key must be usable at ``at``.

        The keys held are looked up first; the trust files are re-read, and the registry caught
        up, only for a key id none of them holds (added a moment ago)."""
        directories = (("operator", self.operators), ("service", self.services))
        owner = None
        for reread in (False, True):
            for kind, directory in directories:
                found = directory.get(kid) if reread else directory.held(kid)
                if found is not None:
                    return Principal(found[0], kind, kid), found[1]  # type: ignore[arg-type]
            owner = self.agents.owner_of(kid)
            if owner is not None:
                break
        if owner is None and self.refresh is not None:
            self.refresh()  # registered a moment ago?
            owner = self.agents.owner_of(kid)
        record = self.agents.get(owner) if owner is not None else None
        key = find_key(record, kid) if record is not None else None
        if record is None or key is None:
            return Rejection(Reason.UNKNOWN_KID, f"no registered agent, operator or service key "
                             f"{kid}")
        problem = key_usable(key, at)
        return problem or (Principal(record.agent_id, "agent", kid), key.jwk)

    def standing(self, principal: Principal) -> Rejection | None:
        """Why an authentic agent may not act now (suspended, quarantined), or None."""
        record = self.agents.get(principal.id) if principal.kind == "agent" else None
        return agent_usable(record) if record is not None else None


def _header(token: str) -> tuple[str, str] | Rejection:
    """kid and alg of an assertion whose header is acceptable."""
    return compact_header(token, typ=API_ASSERTION_TYPE, what="assertion",
                          max_bytes=MAX_ASSERTION_BYTES)


def _decode(token: str, kid: str, alg: str, jwk: PublicJwk) -> AssertionClaims | Rejection:
    """The claims, once the signature verified with the key's own algorithm."""
    data = verify_compact(token, kid, alg, jwk, audience=API_AUDIENCE,
                          required=ASSERTION_CLAIMS, what="assertion")
    if isinstance(data, Rejection):
        return data
    times = [data.get(name) for name in ("iat", "exp")]
    texts = [data.get(name) for name in ("iss", "aud", "jti", "htm", "htu")]
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in times) or not all(
            isinstance(t, str) and t and len(t) <= 512 for t in texts):
        return Rejection(Reason.MALFORMED, "assertion claims have the wrong types")
    iss, aud, jti, htm, htu = (str(t) for t in texts)
    return AssertionClaims(iss=iss, aud=aud, iat=int(str(times[0])), exp=int(str(times[1])),
                           jti=jti, htm=htm, htu=htu)
