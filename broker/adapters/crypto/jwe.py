"""JWE for token delivery: ECDH-ES (X25519) direct key agreement + A256GCM. Imports cryptography.

Also imports schemas and broker.identity/jose/errors. A grant token travels on a shared topic
encrypted to an ephemeral X25519 key the requesting agent sent with its (signed) command, so
only that agent can read it (RFC 7516 compact form, RFC 7518 section 4.6, RFC 8037).
"""

from __future__ import annotations

import json
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash

from broker.adapters.crypto.jose import b64url_decode
from broker.errors import IdentityError
from broker.identity.rules import b64url
from schemas.events import PublicJwk

ALG, ENC = "ECDH-ES", "A256GCM"


def reply_keypair() -> tuple[x25519.X25519PrivateKey, PublicJwk]:
    """An ephemeral X25519 key pair; the private half never leaves the process."""
    private = x25519.X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    return private, PublicJwk(kty="OKP", crv="X25519", x=b64url(raw), use="enc")


def _cek(shared: bytes) -> bytes:
    """Concat KDF (NIST SP 800-56A) as RFC 7518 section 4.6.2 specifies for direct ECDH-ES."""
    def part(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    other = part(ENC.encode()) + part(b"") + part(b"") + struct.pack(">I", 256)
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other).derive(shared)


def encrypt_to(recipient: PublicJwk, plaintext: bytes) -> str:
    """Compact JWE of ``plaintext`` that only the holder of ``recipient``'s private key reads."""
    if recipient.kty != "OKP" or recipient.crv != "X25519":
        raise IdentityError("a reply key must be an X25519 JWK (kty OKP, crv X25519)")
    try:
        peer = x25519.X25519PublicKey.from_public_bytes(b64url_decode(recipient.x))
    except ValueError as exc:
        raise IdentityError(f"invalid X25519 reply key: {exc}") from exc
    eph, epk = reply_keypair()
    header = {"alg": ALG, "enc": ENC,
              "epk": epk.model_dump(mode="json", exclude_none=True, exclude={"use"})}
    protected = b64url(json.dumps(header, separators=(",", ":")).encode())
    iv = os.urandom(12)
    sealed = AESGCM(_cek(eph.exchange(peer))).encrypt(iv, plaintext, protected.encode())
    return ".".join((protected, "", b64url(iv), b64url(sealed[:-16]), b64url(sealed[-16:])))


def decrypt(compact: str, private: x25519.X25519PrivateKey) -> bytes:
    """Open a compact JWE made by ``encrypt_to`` (algorithms pinned to ECDH-ES + A256GCM)."""
    parts = compact.split(".")
    if len(parts) != 5 or parts[1] != "":
        raise IdentityError("not a compact ECDH-ES JWE (5 parts, empty encrypted key)")
    try:
        header = json.loads(b64url_decode(parts[0]))
        if header.get("alg") != ALG or header.get("enc") != ENC:
            raise IdentityError(f"JWE alg/enc must be {ALG}/{ENC}")
        epk = PublicJwk.model_validate(header["epk"])
        peer = x25519.X25519PublicKey.from_public_bytes(b64url_decode(epk.x))
        iv, body, tag = (b64url_decode(p) for p in parts[2:])
        return AESGCM(_cek(private.exchange(peer))).decrypt(iv, body + tag, parts[0].encode())
    except (ValueError, KeyError, TypeError, InvalidTag) as exc:
        raise IdentityError(f"cannot decrypt the token: {type(exc).__name__}") from None
