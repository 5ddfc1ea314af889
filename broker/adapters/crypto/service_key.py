"""Enforcement points as identities: their keys, and the services file that trusts them.

Imports jose, signing, keystore (key files), directory (the services file), config, schemas.

An enforcement point (a resource service's grant view, the API's view) signs the revocation
acks and usage reports it publishes with its own key, as principal ``service:<name>``. Its
private key lives in ``<service_key_dir>/<name>.json`` (0600, on the service's machine); its
public key is listed in the services file (``PERMBROKER_SERVICES_FILE``, 0600, refused when
group/world-writable) by an operator: ``permbroker services keygen`` then ``register``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from broker.adapters.crypto.directory import add_principal
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import read_private, write_private
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.trust import SERVICES_FILE, ServiceDirectory
from broker.adapters.kafka.codec import Encoded
from broker.config import Settings
from broker.errors import IdentityError, KeyFileError
from schemas.events import AGENT_ID_PATTERN, PublicJwk
from schemas.signing import SERVICE_PREFIX


@dataclass(frozen=True)
class ServiceIdentity:
    """An enforcement point's name and private key; repr never shows key material."""

    name: str
    key: SigningKey = field(repr=False)

    @property
    def principal(self) -> str:
        """``service:<name>``: who the point's signatures name."""
        return SERVICE_PREFIX + self.name

    def sign(self, message: Encoded) -> Encoded:
        """The message with this point's ``ce_signature``."""
        return sign_message(message, self.key, self.principal)


def service_key_path(settings: Settings, name: str) -> Path:
    """Where an enforcement point keeps its private key."""
    if re.fullmatch(AGENT_ID_PATTERN, name) is None:
        raise IdentityError(f"not an enforcement point name: {name[:80]!r}")
    return settings.key_path("service-keys") / f"{name}.json"


def load_service(settings: Settings, name: str) -> ServiceIdentity:
    """The point's identity from its key file (KeyFileError saying how to create one)."""
    path = service_key_path(settings, name)
    if not path.exists():
        raise KeyFileError(f"no key for enforcement point {name} at {path}: create one with "
                           f"`permbroker services keygen {name}` and register it")
    data = read_private(path, f"key file of enforcement point {name}")
    return ServiceIdentity(name, SigningKey.from_pem(str(data.get("private_key_pem", ""))))


def create_service(settings: Settings, name: str) -> ServiceIdentity:
    """A new key for an enforcement point; refuses to overwrite an existing one."""
    path = service_key_path(settings, name)
    if path.exists():
        raise KeyFileError(f"enforcement point {name} already has a key at {path}")
    identity = ServiceIdentity(name, SigningKey.generate())
    write_private(path, {"principal": identity.principal,
                         "private_key_pem": identity.key.to_pem()})
    return identity


def register_service(settings: Settings, name: str, jwk: PublicJwk) -> None:
    """Trust ``jwk`` as enforcement point ``name`` (its acks and usage reports count)."""
    service_key_path(settings, name)  # the name's shape is checked once, here too
    add_principal(settings.key_path("services"), SERVICE_PREFIX + name, jwk, SERVICES_FILE)


def ensure_service(settings: Settings, name: str) -> ServiceIdentity:
    """The point's identity, created and registered on first use (local stacks, the API)."""
    path = service_key_path(settings, name)
    identity = load_service(settings, name) if path.exists() else create_service(settings, name)
    if ServiceDirectory(settings.key_path("services")).get(identity.key.kid) is None:
        register_service(settings, name, identity.key.jwk)
    return identity
