"""Keys and JWS primitives (Ed25519 / P-256) for signatures and tokens. Imports pyjwt, cryptography.

Also imports schemas, broker.identity.rules and broker.errors. A ``SigningKey`` is a private key
with its ``kid`` (the RFC 7638 thumbprint of its public JWK) and algorithm; it serializes to PKCS#8
PEM only for the key files that hold it, never into a log line, an event or an exception message.
Algorithms are always pinned by the caller; nothing here takes one from a token. Event signatures
and API assertions share one header check and one verification (``compact_header``,
``verify_compact``).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from broker.errors import IdentityError
from broker.identity.rules import Reason, Rejection, b64url, thumbprint
from schemas.events import KID_PATTERN, PublicJwk

Alg = Literal["EdDSA", "ES256"]
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def b64url_decode(text: str) -> bytes:
    """Inverse of ``b64url``; raises ValueError on bad input."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(key: PublicKey, alg: str) -> PublicJwk:
    """The public JWK of a key, with its kid (thumbprint) and alg."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = PublicJwk(kty="OKP", crv="Ed25519", x=b64url(raw))
    else:
        numbers = key.public_numbers()
        jwk = PublicJwk(kty="EC", crv="P-256", x=b64url(numbers.x.to_bytes(32, "big")),
                        y=b64url(numbers.y.to_bytes(32, "big")))
    return jwk.model_copy(update={"kid": thumbprint(jwk), "alg": alg, "use": "sig"})


def algorithm_of(jwk: PublicJwk) -> Alg:
    """The one signature algorithm a key may be used with (never taken from a token)."""
    if jwk.kty == "OKP" and jwk.crv == "Ed25519":
        return "EdDSA"
    if jwk.kty == "EC" and jwk.crv == "P-256" and jwk.y:
        return "ES256"
    raise IdentityError(f"not a signing key: kty {jwk.kty}, crv {jwk.crv}")


def load_public(jwk: PublicJwk) -> PublicKey:
    """A cryptography public key from a JWK; IdentityError if it is not a valid signing key."""
    alg = algorithm_of(jwk)
    try:
        if alg == "EdDSA":
            return ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk.x))
        x = int.from_bytes(b64url_decode(jwk.x), "big")
        y = int.from_bytes(b64url_decode(jwk.y or ""), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except ValueError as exc:
        raise IdentityError(f"invalid {jwk.crv} public key: {exc}") from exc


@dataclass(frozen=True)
class SigningKey:
    """A private signing key with its kid and algorithm; repr never shows key material."""

    private: PrivateKey = field(repr=False)
    alg: Alg
    kid: str = field(init=False)
    jwk: PublicJwk = field(init=False)

    def __post_init__(self) -> None:
        jwk = public_jwk(self.private.public_key(), self.alg)
        object.__setattr__(self, "jwk", jwk)
        object.__setattr__(self, "kid", jwk.kid or "")

    @classmethod
    def generate(cls, alg: Alg = "EdDSA") -> SigningKey:
        """A fresh key pair (Ed25519 by default, P-256 for ES256)."""
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate(), alg)
        return cls(ec.generate_private_key(ec.SECP256R1()), alg)

    def to_pem(self) -> str:
        """PKCS#8 PEM, for the key file that holds this key (mode 0600) and nothing else."""
        return self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()

    @classmethod
    def from_pem(cls, pem: str) -> SigningKey:
        """Load a PKCS#8 PEM private key (Ed25519 or P-256)."""
        try:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"unreadable private key: {type(exc).__name__}") from None
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return cls(key, "EdDSA")
        if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
            return cls(key, "ES256")
        raise IdentityError("unsupported private key type (use Ed25519 or P-256)")

    def sign_jwt(self, claims: dict[str, Any], typ: str) -> str:
        """A compact JWS of ``claims`` with header {alg, kid, typ}."""
        return jwt.encode(claims, self.private, algorithm=self.alg,
                          headers={"kid": self.kid, "typ": typ})


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header of a compact JWS, *not verified*: for choosing the key only.

    Parsed with the standard library (PyJWT's segment decoding costs more than the signature
    check itself, and the header would otherwise be decoded twice per event).
    """
    head = token.split(".", 1)[0]
    try:
        header = json.loads(b64url_decode(head))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IdentityError(f"malformed JWS: header is not base64url JSON ({exc})") from None
    if not isinstance(header, dict):
        raise IdentityError("malformed JWS: header is not a JSON object")
    return header


# Header parameters that would let a token name its own key: keys come from the registry and the
# trust files only.
FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256", "crit")


def compact_header(token: str, *, typ: str, what: str,
                   max_bytes: int) -> tuple[str, str] | Rejection:
    """``(kid, alg)`` of a compact JWS whose header is acceptable (nothing verified yet), or
    why it is malformed; ``what`` names the credential in the reason ("signature", ...)."""
    if len(token) > max_bytes or token.count(".") != 2:
        return Rejection(Reason.MALFORMED, f"{what} is not a compact JWS")
    try:
        header = unverified_header(token)
    except IdentityError as exc:
        return Rejection(Reason.MALFORMED, str(exc))
    if header.get("typ") != typ:
        return Rejection(Reason.MALFORMED, f"{what} typ must be {typ!r}")
    bad = [name for name in FORBIDDEN_HEADERS if name in header]
    if bad:
        return Rejection(Reason.MALFORMED, f"{what} header parameter(s) {', '.join(bad)} are not "
                         "accepted: keys come from the registry and trust files only")
    kid, alg = header.get("kid"), header.get("alg")
    if not isinstance(kid, str) or re.fullmatch(KID_PATTERN, kid) is None:
        return Rejection(Reason.MALFORMED, f"{what} kid missing or not a key id")
    if not isinstance(alg, str):
        return Rejection(Reason.MALFORMED, f"{what} alg missing")
    return kid, alg


def verify_compact(token: str, kid: str, alg: str, jwk: PublicJwk, *, audience: str,
                   required: Iterable[str], what: str) -> dict[str, Any] | Rejection:
    """The claims of a compact JWS verified with ``jwk`` and the key's own algorithm (never the
    token's); times are the caller's to check."""
    try:
        expected = algorithm_of(jwk)
        public = load_public(jwk)
    except IdentityError as exc:
        return Rejection(Reason.MALFORMED, f"key {kid} unusable: {exc}")
    if alg != expected:
        return Rejection(Reason.FORGED, f"{what} alg {alg!r} is not the key's {expected!r}")
    try:
        data: dict[str, Any] = jwt.decode(
            token, public, algorithms=[expected], audience=audience,
            options={"require": list(required), "verify_exp": False, "verify_iat": False,
                     "verify_nbf": False})
    except jwt.InvalidSignatureError:
        return Rejection(Reason.FORGED, f"{what} does not verify with key {kid}")
    except jwt.PyJWTError as exc:
        return Rejection(Reason.MALFORMED, f"{what} claims invalid: {exc}")
    return data
