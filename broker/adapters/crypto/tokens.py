"""The broker's keys: grant-token minting and record signing. Imports pyjwt (via jose), keystore.

Also imports signing, schemas. ``BrokerKeyring`` is the worker's live view of the keyring file at
``Settings.key_path("broker")``: it re-reads the file when it changes, so a rotation needs no
restart. ``jwks()`` returns the public key set to publish (and to serve at
``/.well-known/jwks.json``): every key that has not retired, including one that activates
shortly (so verifiers know it before it signs anything). ``RecordSigner`` signs every record the
broker writes with the active key: the same keys sign grant tokens and records, so one chain of
trust (the anchor, then the published sets) vouches for both.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import BrokerKey, read_keyring, rotated, write_keyring
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.codec import Encoded
from broker.errors import IdentityError, KeyFileError
from broker.identity.rules import Rejection
from broker.identity.tokens import token_claims
from schemas.events import GrantIssued, JwksPublished, PublicJwk
from schemas.signing import GRANT_TOKEN_TYPE

ROTATION_LEAD_S = 1.0  # a new key is published this long before it signs


class BrokerKeyring:
    """The broker's signing keys from one file; reloads on change; never exposes private keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.issuer = "permbroker"
        self._keys: list[BrokerKey] = []
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed since the last read; True if it did."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise KeyFileError(f"no broker keyring at {self.path}: run `permbroker keys init` "
                               "(or `permbroker stack up`, which creates it)") from None
        stamp = (st.st_mtime_ns, st.st_ino)
        if stamp == self._stamp:
            return False
        self.issuer, self._keys = read_keyring(self.path)
        self._stamp = stamp
        return True

    def signing_key(self, now: datetime) -> SigningKey:
        """The newest key that is active at ``now``."""
        live = [k for k in self._keys
                if k.activate_at <= now and (k.retire_at is None or k.retire_at > now)]
        if not live:
            raise IdentityError(f"no active broker signing key in {self.path}: "
                                "run `permbroker keys rotate`")
        return max(live, key=lambda k: k.activate_at).key

    def jwks(self, now: datetime) -> JwksPublished:
        """The public keys verifiers must accept at ``now`` (none that has retired)."""
        keys = sorted((k for k in self._keys if k.retire_at is None or k.retire_at > now),
                      key=lambda k: k.activate_at)
        public: tuple[PublicJwk, ...] = tuple(k.key.jwk for k in keys)
        revision = hashlib.sha256(",".join(
            f"{k.key.kid}@{k.retire_at}" for k in keys).encode()).hexdigest()[:16]
        return JwksPublished(issuer=self.issuer, keys=public, revision=revision,
                             published_at=now)

    def chain_key(self, signers: Collection[str], now: datetime) -> SigningKey | None:
        """The key to sign the next key set with: one the readers' set in force lists (the
        active one if it does), so the chain of trust is never broken; None if none is held."""
        held = [k for k in self._keys if k.key.kid in signers
                and (k.retire_at is None or k.retire_at > now)]
        active = [k for k in held if k.activate_at <= now]
        chosen = max(active or held, key=lambda k: k.activate_at, default=None)
        return chosen.key if chosen is not None else None

    def retirements(self) -> list[tuple[str, datetime]]:
        """(kid, retire_at) of every retiring key."""
        return [(k.key.kid, k.retire_at) for k in self._keys if k.retire_at is not None]

    def rotate(self, now: datetime, *, overlap_s: int, lead_s: float = ROTATION_LEAD_S,
               cause: str = "") -> str:
        """Add a new key (signing from now + lead); retire the others after ``overlap_s``.

        With a ``cause`` (the command id) a second call for the same cause adds nothing.
        """
        self.reload()
        keys = rotated(self._keys, now, overlap_s=overlap_s, lead_s=lead_s, cause=cause)
        if keys is not self._keys:
            write_keyring(self.path, self.issuer, keys)
            self.reload()
        added = [k for k in keys if cause and k.cause == cause] or keys[-1:]
        return added[-1].key.kid

    def prune(self, now: datetime) -> bool:
        """Drop retired keys from the file; True if any was dropped."""
        live = [k for k in self._keys if k.retire_at is None or k.retire_at > now]
        if len(live) == len(self._keys):
            return False
        write_keyring(self.path, self.issuer, live)
        self.reload()
        return True


def mint_grant_token(grant: GrantIssued, audience: str, keyring: BrokerKeyring, *,
                     now: datetime, max_ttl_s: int) -> tuple[str, datetime]:
    """A signed grant token and its expiry; IdentityError if none can be issued."""
    claims = token_claims(grant, audience, issuer=keyring.issuer, now=now, max_ttl_s=max_ttl_s)
    if isinstance(claims, Rejection):
        raise IdentityError(claims.detail)
    token = keyring.signing_key(now).sign_jwt(claims, GRANT_TOKEN_TYPE)
    exp = claims["exp"]
    assert isinstance(exp, int)
    return token, datetime.fromtimestamp(exp, tz=now.tzinfo)


class RecordSigner:
    """Signs each record the broker writes (``ce_signature``) with the keyring's active key."""

    def __init__(self, keyring: BrokerKeyring, *, reload_every_s: float = 1.0) -> None:
        self.keyring = keyring
        self._every = reload_every_s
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, message: Encoded) -> Encoded:
        """The message signed now; IdentityError when no key is active (nothing is written)."""
        now = datetime.now(UTC)
        with self._lock:
            if time.monotonic() - self._checked > self._every:
                self._checked = time.monotonic()
                self.keyring.reload()  # a rotation by another worker or the CLI
            key = self.keyring.signing_key(now)
        return sign_message(message, key, self.keyring.issuer, now)
