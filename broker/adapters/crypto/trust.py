"""``RecordTrust``: how every reader verifies what the broker and enforcement points signed.

Imports signing, directory, the key chain (broker.identity), the decode edge's types, schemas.

One per process, shared by its readers (grant views, registry view, watchers, rebuild, CLI). A
record of a broker topic must carry a ``ce_signature`` by a key of the broker's chain of trust
(``KeyChain``: the trust anchor, then the key sets accepted from the JWKS topic, followed by
``broker.adapters.kafka.jwks.JwksView``), binding the exact value bytes, id, type and key, with
``iss`` the broker's issuer and ``iat`` within the key's life. A record of an enforcement point
(acks, usage reports) must be signed by that point's key from the services file. A record signed
by a key id not known yet makes the reader catch up with the JWKS topic once (a new key is
published before it signs anything), then it is refused if the key is still unknown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from broker.adapters.crypto import signing
from broker.adapters.crypto.directory import KeyDirectory, read_anchor
from broker.adapters.kafka.edge import ROLE_BROKER, ROLE_SERVICE, Refusals, Signed
from broker.identity.keychain import KeyChain
from broker.identity.rules import Reason, Rejection, check_bound
from schemas.events import JwksPublished, PublicJwk
from schemas.signing import SERVICE_PREFIX

REFRESH_EVERY_S = 0.1  # a key published this recently is caught by the refresh just done
SERVICES_FILE = "services file"
_EPOCH = datetime.fromtimestamp(0, UTC)  # a record's append time plays no part in its trust


class ServiceDirectory(KeyDirectory):
    """Enforcement points' public keys (the services file), re-read when it changes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, SERVICE_PREFIX, SERVICES_FILE)


class RecordTrust:
    """Verifies records against the broker's chain of trust and the enforcement points' keys."""

    def __init__(self, chain: KeyChain, *, services: ServiceDirectory | None = None,
                 refusals: Refusals | None = None) -> None:
        self.chain = chain
        self.services = services
        self.refusals = refusals or Refusals()
        self._lock = threading.Lock()
        self._refresh: Callable[[float], bool] | None = None
        self._refreshed_at = 0.0

    @classmethod
    def from_files(cls, anchor: Path, services: Path | None = None, *, leeway_s: int = 30,
                   refusals: Refusals | None = None) -> RecordTrust:
        """Trust starting from an anchor file (KeyFileError when it is missing or too open)."""
        issuer, keys = read_anchor(anchor)
        return cls(KeyChain(issuer, keys, leeway_s=leeway_s),
                   services=ServiceDirectory(services) if services is not None else None,
                   refusals=refusals)

    @property
    def issuer(self) -> str:
        """The issuer whose records (and grant tokens) this trust verifies."""
        return self.chain.issuer

    def follow(self, refresh: Callable[[float], bool]) -> None:
        """How to catch up with the JWKS topic when a record names an unknown key."""
        self._refresh = refresh

    # --- key sets ------------------------------------------------------------------------------

    def accept(self, jwks: JwksPublished, signer_kid: str) -> Rejection | None:
        """Apply a verified key set record (the chain says whether it may replace the set)."""
        with self._lock:
            return self.chain.accept(jwks, signer_kid)

    def in_force(self) -> tuple[PublicJwk, ...]:
        """The keys grant tokens may be signed with now."""
        with self._lock:
            return self.chain.in_force()

    def get(self, kid: str) -> PublicJwk | None:
        """A key of the set in force (grant tokens verify with these and nothing else)."""
        with self._lock:
            return next((k for k in self.chain.in_force() if k.kid == kid), None)

    def current(self) -> JwksPublished | None:
        """The key set in force (None while only the anchor is known)."""
        with self._lock:
            return self.chain.current

    def signers(self) -> frozenset[str]:
        """Key ids that may sign the next key set."""
        with self._lock:
            return self.chain.signers()

    # --- records -------------------------------------------------------------------------------

    def verify(self, role: str, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]]) -> Signed | Rejection:
        """The verified signer of a record, if signed as ``role`` requires; else why not."""
        sig = signing.presented(headers)
        if sig is None:
            return Rejection(Reason.UNSIGNED, f"record carries no ce_signature ({role} records "
                             "are signed)")
        if isinstance(sig, Rejection):
            return sig
        found = self._broker_key(sig.kid) if role == ROLE_BROKER else \
            self._service_key(sig.kid) if role == ROLE_SERVICE else \
            Rejection(Reason.NOT_PERMITTED, f"no signer role {role!r}")
        if isinstance(found, Rejection):
            return found
        principal, jwk = found
        claims = signing.verify_claims(sig, jwk)
        if isinstance(claims, Rejection):
            return claims
        problem = check_bound(claims, signing.facts(key, value, headers, _EPOCH))
        if problem is None and claims.iss != principal:
            problem = Rejection(Reason.TAMPERED, f"signature iss {claims.iss[:80]!r} is not "
                                f"{principal!r}")
        if problem is None and role == ROLE_BROKER:
            with self._lock:
                problem = self.chain.usable_at(sig.kid, claims.iat)
        return problem or Signed(principal, sig.kid, claims.iat)

    def _broker_key(self, kid: str) -> tuple[str, PublicJwk] | Rejection:
        with self._lock:
            jwk = self.chain.known(kid)
        if jwk is None and self._catch_up():
            with self._lock:
                jwk = self.chain.known(kid)
        if jwk is None:
            return Rejection(Reason.UNKNOWN_KID, f"key {kid} is not in the broker's chain of "
                             "trust (trust anchor, then the key sets published on the JWKS "
                             "topic)")
        return self.chain.issuer, jwk

    def _service_key(self, kid: str) -> tuple[str, PublicJwk] | Rejection:
        found = self.services.get(kid) if self.services is not None else None
        if found is None:
            return Rejection(Reason.UNKNOWN_KID, f"key {kid} is not an enforcement point's key "
                             "in the services file (permbroker services register)")
        return found

    def _catch_up(self) -> bool:
        """Catch up with the JWKS topic, unless that was just done; True if it was done now."""
        refresh = self._refresh
        started = time.monotonic()
        if refresh is None or started - self._refreshed_at < REFRESH_EVERY_S:
            return False
        refresh(2.0)
        self._refreshed_at = started
        return True

