"""Event signatures and token sealing on real crypto, including interop with joserfc."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwe as jose_jwe
from joserfc import jwk as jose_jwk
from joserfc import jwt as jose_jwt

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.jwe import decrypt, encrypt_to, reply_keypair
from broker.adapters.crypto.signing import facts, presented, sign_message, verify_claims
from broker.adapters.kafka import codec
from broker.errors import IdentityError
from broker.identity.rules import (
    EventClaims,
    Reason,
    Rejection,
    check_binding,
    thumbprint,
    value_digest,
)
from schemas.events import EscalationRequested, PublicJwk
from schemas.signing import EVENT_TOKEN_TYPE, SIGNATURE_HEADER

NOW = datetime.now(UTC)
REQ = EscalationRequested(request_id="req-1", agent_id="fraud-1", scopes=("a:b.c",),
                          duration_s=60, reason="r", confidence=0.9, requested_at=NOW)


def message() -> codec.Encoded:
    return codec.encode(REQ, source="/tests")


def verified(m: codec.Encoded, key: PublicJwk) -> EventClaims | Rejection:
    sig = presented(m.headers)
    assert sig is not None and not isinstance(sig, Rejection)
    return verify_claims(sig, key)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_signed_message_verifies_and_binds_itself(alg: str) -> None:
    """A signature by the agent's key verifies and binds id, type, key and value bytes."""
    key = SigningKey.generate(alg)  # type: ignore[arg-type]
    m = sign_message(message(), key, "fraud-1", now=NOW)  # judged as if appended at NOW
    claims = verified(m, key.jwk)
    assert isinstance(claims, EventClaims) and claims.iss == "fraud-1"
    assert check_binding(claims, facts(m.key, m.value, m.headers, NOW), max_age_s=300,
                         skew_s=30) is None
    assert key.kid == thumbprint(key.jwk)


def test_another_key_makes_it_a_forgery_and_new_bytes_make_it_tampered() -> None:
    """Verified with the wrong key: forged; body changed under a valid signature: tampered."""
    key, other = SigningKey.generate(), SigningKey.generate()
    m = sign_message(message(), key, "fraud-1", now=NOW)
    forged = verified(m, other.jwk)
    assert isinstance(forged, Rejection) and forged.code is Reason.FORGED
    changed = m.value.replace(b'"confidence":0.9', b'"confidence":1.0')
    assert changed != m.value
    claims = verified(m, key.jwk)
    assert isinstance(claims, EventClaims)
    why = check_binding(claims, facts(m.key, changed, m.headers, NOW), max_age_s=300, skew_s=30)
    assert why is not None and why.code is Reason.TAMPERED


def test_each_signature_has_a_fresh_nonce() -> None:
    """Signing the same message twice gives two nonces (a resend is not a replay)."""
    key = SigningKey.generate()
    first, second = (verified(sign_message(message(), key, "fraud-1"), key.jwk)
                     for _ in range(2))
    assert isinstance(first, EventClaims) and isinstance(second, EventClaims)
    assert first.jti != second.jti


@pytest.mark.parametrize("value, reason", [
    ("not-a-jws", "compact JWS"),
    ("a.b.c", "malformed JWS"),
])
def test_malformed_signature_headers_are_rejected(value: str, reason: str) -> None:
    """Garbage in ce_signature is malformed, with a reason."""
    got = presented([(SIGNATURE_HEADER, value.encode())])
    assert isinstance(got, Rejection) and got.code is Reason.MALFORMED and reason in got.detail


# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" alg name (for "Ed25519"); the
# documented protocol, pyjwt and the broker sign with "EdDSA", which is what this interop checks.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_a_joserfc_signature_following_the_protocol_verifies() -> None:
    """A signature made with joserfc from docs/protocol.md is accepted (interop)."""
    key = jose_jwk.OKPKey.generate_key("Ed25519")
    public = PublicJwk.model_validate(key.as_dict(private=False))
    m = message()
    headers = dict(m.headers)
    claims = {"iss": "fraud-1", "aud": "permbroker", "iat": int(NOW.timestamp()),
              "jti": "nonce-1", "ce_id": headers["ce_id"].decode(),
              "ce_type": headers["ce_type"].decode(), "key": "fraud-1",
              "digest": value_digest(m.value)}
    token = jose_jwt.encode({"alg": "EdDSA", "kid": key.thumbprint(), "typ": EVENT_TOKEN_TYPE},
                            claims, key, algorithms=["EdDSA"])
    signed = codec.Encoded(m.key, m.value, [*m.headers, (SIGNATURE_HEADER, token.encode())])
    got = verified(signed, public.model_copy(update={"kid": key.thumbprint()}))
    assert isinstance(got, EventClaims) and got.jti == "nonce-1"
    assert key.thumbprint() == thumbprint(public)


def test_a_sealed_token_opens_only_with_the_reply_key_and_joserfc_agrees() -> None:
    """ECDH-ES + A256GCM to the agent's one-time key: we and joserfc open it, others cannot."""
    private, public = reply_keypair()
    sealed = encrypt_to(public, b"the token")
    assert decrypt(sealed, private) == b"the token"
    other, _ = reply_keypair()
    with pytest.raises(IdentityError):
        decrypt(sealed, other)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    theirs = jose_jwk.OKPKey.import_key(pem)
    assert jose_jwe.decrypt_compact(sealed, theirs,
                                    algorithms=["ECDH-ES", "A256GCM"]).plaintext == b"the token"
    back = jose_jwe.encrypt_compact({"alg": "ECDH-ES", "enc": "A256GCM"}, b"from joserfc", theirs,
                                    algorithms=["ECDH-ES", "A256GCM"])
    assert decrypt(back, private) == b"from joserfc"
    assert json.loads(base64.urlsafe_b64decode(sealed.split(".")[0] + "=="))["alg"] == "ECDH-ES"
