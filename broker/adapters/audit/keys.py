"""Audit keys on disk: the HMAC key of sensitive values and the Ed25519 key that signs digests.

Imports cryptography, broker.config, broker.errors, stdlib.

Files (``Settings.audit_key_dir``, by default ``<stack_dir>/keys``): ``audit-hmac.key`` (32
random bytes, hex), ``audit-signing.key`` (Ed25519 private key, PKCS#8 PEM) and
``audit-signing.pub`` (its public key, what ``permbroker audit verify`` needs). Private files are
created 0600 in a 0700 directory. Key material is never logged or printed; only the public key's
id (16 hex of the sha256 of its raw bytes) is.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.config import Settings
from broker.errors import ConfigError

HMAC_FILE = "audit-hmac.key"
SIGNING_FILE = "audit-signing.key"
PUBLIC_FILE = "audit-signing.pub"


def key_dir(settings: Settings) -> Path:
    """Where the audit keys live."""
    return (settings.audit_key_dir or settings.stack_dir / "keys").expanduser()


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex of the sha256 of the raw public key: names the key in every digest."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class AuditKeys:
    """The loaded keys of a worker (or of a CLI that hashes values)."""

    hmac_key: bytes
    signing: Ed25519PrivateKey | None
    key_id: str

    def sign(self, payload: bytes) -> str:
        """Base64 Ed25519 signature of ``payload``."""
        if self.signing is None:
            raise ConfigError("no audit signing key loaded")
        return base64.b64encode(self.signing.sign(payload)).decode()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_keys(settings: Settings) -> list[Path]:
    """Create whichever audit key files are missing; returns the files it created."""
    folder = key_dir(settings)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    created = []
    if not (folder / HMAC_FILE).exists():
        _write_private(folder / HMAC_FILE, secrets.token_hex(32).encode() + b"\n")
        created.append(folder / HMAC_FILE)
    if not (folder / SIGNING_FILE).exists():
        private = Ed25519PrivateKey.generate()
        _write_private(folder / SIGNING_FILE, private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (folder / PUBLIC_FILE).write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        created += [folder / SIGNING_FILE, folder / PUBLIC_FILE]
    return created


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{what} not readable at {path} ({exc.strerror}); create the audit keys with "
            "`permbroker audit keys init` (or `permbroker stack up`), or set "
            "PERMBROKER_AUDIT_KEY_DIR"
        ) from exc


def load_hmac_key(settings: Settings) -> bytes:
    """The HMAC key of sensitive values (ConfigError, saying what to do, when missing)."""
    text = _read(key_dir(settings) / HMAC_FILE, "audit HMAC key").strip()
    try:
        key = bytes.fromhex(text.decode())
    except ValueError as exc:
        raise ConfigError(f"{key_dir(settings) / HMAC_FILE} does not hold a hex key") from exc
    if len(key) < 16:
        raise ConfigError(f"{key_dir(settings) / HMAC_FILE}: the key is shorter than 16 bytes")
    return key


def load_keys(settings: Settings) -> AuditKeys:
    """The HMAC key and the signing key; ConfigError when either is missing (fail closed)."""
    pem = _read(key_dir(settings) / SIGNING_FILE, "audit signing key")
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except ValueError as exc:
        raise ConfigError(f"{key_dir(settings) / SIGNING_FILE} is not a PEM private key") from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise ConfigError(f"{key_dir(settings) / SIGNING_FILE} is not an Ed25519 key")
    return AuditKeys(load_hmac_key(settings), private, key_id(private.public_key()))


def load_public_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """key id -> public key, from PEM files (public keys, or private keys to derive them)."""
    out: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        pem = _read(path, "audit public key")
        try:
            key: object = serialization.load_pem_public_key(pem)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(pem, password=None).public_key()
            except ValueError as exc:
                raise ConfigError(f"{path} holds no PEM Ed25519 key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 key")
        out[key_id(key)] = key
    return out


def signature_check(keys: dict[str, Ed25519PublicKey]) -> Callable[[str, bytes, str], bool | None]:
    """A ``broker.audit.verify.SignatureCheck`` over these public keys."""

    def check(kid: str, payload: bytes, signature: str) -> bool | None:
        key = keys.get(kid)
        if key is None:
            return None
        try:
            key.verify(base64.b64decode(signature, validate=True), payload)
        except (InvalidSignature, ValueError):
            return False
        return True

    return check
