"""API assertions: minted by a principal's own key, verified against the trust files and the
registry (real keys, the real in-memory registry), every way one can fail a distinct refusal."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from broker.adapters.crypto.assertions import Identities, Verified, mint
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.kafka.registry_view import Registry
from broker.identity.rules import Reason, Rejection
from schemas.events import AgentKey, AgentProfile, AgentRecord, ModelInfo, PublicJwk

NOW = datetime.now(UTC).replace(microsecond=0)
PATH = "/v1/agents/fraud-1/escalations"
OPERATOR, SERVICE, AGENT = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


class Trusted:
    """A trust file's content: kid -> (principal, key)."""

    def __init__(self, principal: str, key: SigningKey) -> None:
        self.keys = {key.kid: (principal, key.jwk)}

    def held(self, kid: str) -> tuple[str, PublicJwk] | None:
        return self.keys.get(kid)

    def get(self, kid: str) -> tuple[str, PublicJwk] | None:
        return self.keys.get(kid)


def registry(status: str = "active", key_status: str = "active") -> Registry:
    profile = AgentProfile(agent_id="fraud-1", agent_class="fraud-detection", owner="o@x",
                           model=ModelInfo(name="m", version="1", digest="sha256:00"))
    key = AgentKey(kid=AGENT.kid, jwk=AGENT.jwk, status=key_status,  # type: ignore[arg-type]
                   added_at=NOW - timedelta(days=1),
                   revoked_at=NOW if key_status == "revoked" else None)
    reg = Registry()
    reg.apply(AgentRecord(agent_id="fraud-1", profile=profile, keys=(key,),
                          status=status,  # type: ignore[arg-type]
                          revision=1, change="registered", changed_at=NOW,
                          changed_by="operator:alice", cause_id="c-1", registered_at=NOW))
    return reg


def identities(reg: Registry | None = None) -> Identities:
    return Identities(Trusted("operator:alice", OPERATOR), Trusted("service:payments", SERVICE),
                      reg or registry(), max_life_s=120, leeway_s=5)


def verify(token: str, call: tuple[str, str] | None = ("POST", PATH),
           reg: Registry | None = None) -> Verified | Rejection:
    return identities(reg).verify(token, NOW, call)


def refused(result: Verified | Rejection) -> Reason:
    assert isinstance(result, Rejection), result
    return result.code


def test_each_kind_of_principal_is_verified_with_its_own_key() -> None:
    """An operator's, a service's and an agent's assertion each name their principal."""
    for key, principal, kind in ((OPERATOR, "operator:alice", "operator"),
                                 (SERVICE, "service:payments", "service"),
                                 (AGENT, "fraud-1", "agent")):
        found = verify(mint(key, principal, "post", PATH, now=NOW))
        assert isinstance(found, Verified), found
        assert (found.principal.id, found.principal.kind) == (principal, kind)
        assert found.claims.htm == "POST" and found.claims.htu == PATH


def test_an_assertion_is_for_one_call_by_its_owner_and_short_lived() -> None:
    """Another path or method, another issuer, a long life, an expired or future one: refused."""
    assert refused(verify(mint(AGENT, "fraud-1", "GET", PATH, now=NOW))) is Reason.TAMPERED
    assert refused(verify(mint(AGENT, "fraud-1", "POST", PATH + "x", now=NOW))) \
        is Reason.TAMPERED
    assert refused(verify(mint(AGENT, "fraud-2", "POST", PATH, now=NOW))) is Reason.TAMPERED
    assert refused(verify(mint(AGENT, "fraud-1", "POST", PATH, now=NOW, ttl_s=3600))) \
        is Reason.STALE
    old = NOW - timedelta(minutes=5)
    assert refused(verify(mint(AGENT, "fraud-1", "POST", PATH, now=old))) is Reason.STALE
    ahead = NOW + timedelta(minutes=5)
    assert refused(verify(mint(AGENT, "fraud-1", "POST", PATH, now=ahead))) is Reason.STALE
    relayed = verify(mint(AGENT, "fraud-1", "POST", PATH, now=NOW), call=None)
    assert isinstance(relayed, Verified)  # the worker judges it without the HTTP call


def test_unknown_forged_and_revoked_keys_are_refused() -> None:
    """A key nobody trusts, a signature by another key, a revoked agent key: refused; a
    suspended agent's valid key still authenticates (its standing is judged by the worker)."""
    stranger = SigningKey.generate()
    assert refused(verify(mint(stranger, "fraud-1", "POST", PATH, now=NOW))) \
        is Reason.UNKNOWN_KID
    token = mint(AGENT, "fraud-1", "POST", PATH, now=NOW)
    head, claims, _sig = token.split(".")
    forged = mint(stranger, "fraud-1", "POST", PATH, now=NOW).split(".")[2]
    assert refused(verify(f"{head}.{claims}.{forged}")) is Reason.FORGED
    assert refused(verify(token, reg=registry(key_status="revoked"))) is Reason.KEY_REVOKED
    suspended = verify(token, reg=registry(status="suspended"))
    assert isinstance(suspended, Verified)
    standing = identities(registry(status="suspended")).standing(suspended.principal)
    assert standing is not None and standing.code is Reason.SUSPENDED


@pytest.mark.parametrize("header, code", [
    ({"typ": "JWT"}, Reason.MALFORMED), ({"jku": "https://x"}, Reason.MALFORMED),
    ({"kid": "../etc"}, Reason.MALFORMED), ({"alg": "HS256"}, Reason.FORGED)])
def test_a_bent_header_is_refused(header: dict[str, str], code: Reason) -> None:
    """Wrong typ, a key URL, a kid that is not a key id: malformed; an algorithm other than
    the key's own: refused as forged (the algorithm comes from the key, never the token)."""
    token = mint(AGENT, "fraud-1", "POST", PATH, now=NOW)
    head, rest = token.split(".", 1)
    parsed = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    bent = base64.urlsafe_b64encode(json.dumps(parsed | header).encode()).rstrip(b"=").decode()
    assert refused(verify(f"{bent}.{rest}")) is code
    assert refused(verify("not-a-jws")) is Reason.MALFORMED
