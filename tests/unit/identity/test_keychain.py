"""The chain of trust of the broker's keys (broker/identity/keychain.py), as a reader holds it.

A key set is accepted only when signed by a key of the set in force (at first, the anchor),
never for being newer; rotation keeps the chain; a retired key still vouches for what it signed
before it retired, and for nothing later.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.adapters.crypto.jose import SigningKey
from broker.identity.keychain import KeyChain
from broker.identity.rules import Reason
from schemas.events import JwksPublished, PublicJwk

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
K1, K2, K3, EVIL = (SigningKey.generate() for _ in range(4))


def _set(revision: str, *keys: SigningKey, at: datetime = T0,
         issuer: str = "permbroker") -> JwksPublished:
    jwks: tuple[PublicJwk, ...] = tuple(k.jwk for k in keys)
    return JwksPublished(issuer=issuer, keys=jwks, revision=revision, published_at=at)


def test_a_set_signed_by_an_unknown_key_changes_nothing_however_new() -> None:
    """published_at in 2099, signed by a key the anchor does not hold: refused, nothing moves."""
    chain = KeyChain("permbroker", [K1.jwk])
    forged = _set("evil", EVIL, at=datetime(2099, 1, 1, tzinfo=UTC))
    problem = chain.accept(forged, EVIL.kid)
    assert problem is not None and problem.code is Reason.UNKNOWN_KID
    assert chain.current is None and [k.kid for k in chain.in_force()] == [K1.kid]
    assert chain.known(EVIL.kid) is None
    assert chain.accept(_set("other", K1, issuer="someone"), K1.kid) is not None


def test_rotation_keeps_the_chain_and_retires_the_old_key_at_the_set_that_drops_it() -> None:
    """{k1} by k1, {k1,k2} by k1, {k2} by k2: each accepted; k1 then signs no set, and its
    records verify up to its retirement (plus the leeway), not after."""
    chain = KeyChain("permbroker", [K1.jwk], leeway_s=30)
    assert chain.accept(_set("r1", K1), K1.kid) is None
    assert chain.accept(_set("r2", K1, K2, at=T0 + timedelta(minutes=1)), K1.kid) is None
    retire = T0 + timedelta(minutes=3)
    assert chain.accept(_set("r3", K2, at=retire), K2.kid) is None
    assert chain.signers() == frozenset({K2.kid})
    late = _set("r4", K1, K3, at=T0 + timedelta(minutes=4))
    assert chain.accept(late, K1.kid) is not None  # a retired key signs no new set
    before, after = int(retire.timestamp()) + 10, int(retire.timestamp()) + 31
    assert chain.usable_at(K1.kid, before) is None
    refused = chain.usable_at(K1.kid, after)
    assert refused is not None and refused.code is Reason.KEY_RETIRED
    assert chain.usable_at(K2.kid, after) is None
    assert chain.usable_at(EVIL.kid, after) is not None


def test_an_older_set_replayed_never_rolls_the_keys_back() -> None:
    """The set in force again is a no-op; an older set, even validly signed, is refused."""
    chain = KeyChain("permbroker", [K1.jwk])
    first = _set("r1", K1, K2)
    assert chain.accept(first, K1.kid) is None
    assert chain.accept(_set("r2", K2, at=T0 + timedelta(minutes=2)), K2.kid) is None
    assert chain.accept(_set("r2", K2, at=T0 + timedelta(minutes=2)), K2.kid) is None
    replay = chain.accept(_set("r0", K2, K3, at=T0 - timedelta(minutes=1)), K2.kid)
    assert replay is not None and replay.code is Reason.STALE
    assert chain.current is not None and chain.current.revision == "r2"
