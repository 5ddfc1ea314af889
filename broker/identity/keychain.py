"""The chain of trust of the broker's keys, as a reader holds it (pure). Imports schemas, rules.

A reader starts from a trust anchor (a pinned JWKS: the broker's first public keys) and learns
later keys only from key sets the broker publishes on the JWKS topic: a set is accepted when it
is signed by a key of the set in force (at first, the anchor), for the same issuer, and is not
older than the set in force. Its ``published_at`` never decides alone: a set signed by an unknown
key changes nothing, however new. Rotation keeps the chain: the new set, which lists the old and
the new key, is signed by the old key; the set that later drops the old key is signed by the new.

A key left out of an accepted set is retired at that set's ``published_at``: records it signed
before then (``iat``, within ``leeway_s``) still verify, so a replayed log stays readable after
rotations; a record it signs later does not.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.identity.rules import Reason, Rejection
from schemas.events import JwksPublished, PublicJwk


@dataclass(frozen=True)
class TrustedKey:
    """A broker key the chain vouches for, and when an accepted set dropped it (None: in force)."""

    jwk: PublicJwk
    retired_at: datetime | None = None


class KeyChain:
    """Every broker key a reader trusts: the anchor's, then those of each set it accepted."""

    def __init__(self, issuer: str, anchor: Iterable[PublicJwk], *, leeway_s: int = 30) -> None:
        self.issuer = issuer
        self.leeway = timedelta(seconds=leeway_s)
        self._keys: dict[str, TrustedKey] = {k.kid: TrustedKey(k) for k in anchor if k.kid}
        self._signers = frozenset(self._keys)  # who may sign the next key set
        self.current: JwksPublished | None = None  # the set in force (None: the anchor)

    @property
    def anchored(self) -> bool:
        """Whether the anchor named any key (without one, nothing can ever be trusted)."""
        return bool(self._keys)

    def signers(self) -> frozenset[str]:
        """Key ids that may sign the next key set (those of the set in force)."""
        return self._signers

    def in_force(self) -> tuple[PublicJwk, ...]:
        """The keys of the set in force: what grant tokens may be signed with."""
        if self.current is not None:
            return self.current.keys
        return tuple(k.jwk for k in self._keys.values() if k.retired_at is None)

    def known(self, kid: str) -> PublicJwk | None:
        """A key the chain ever vouched for (retired or not)."""
        found = self._keys.get(kid)
        return found.jwk if found is not None else None

    def usable_at(self, kid: str, iat: int) -> Rejection | None:
        """Whether a record signed by ``kid`` at ``iat`` (seconds) is within the key's life."""
        found = self._keys.get(kid)
        if found is None:
            return Rejection(Reason.UNKNOWN_KID, f"key {kid} is not in the broker's chain of trust")
        if found.retired_at is not None and iat > (found.retired_at + self.leeway).timestamp():
            return Rejection(Reason.KEY_RETIRED, f"key {kid} was retired at "
                             f"{found.retired_at.isoformat()}; it signed this record later")
        return None

    def accept(self, jwks: JwksPublished, signer: str) -> Rejection | None:
        """Take ``jwks`` as the set in force if the chain allows it; else why not."""
        if jwks.issuer != self.issuer:
            return Rejection(Reason.NOT_PERMITTED, f"key set of issuer {jwks.issuer!r}, this "
                             f"reader trusts {self.issuer!r}")
        if signer not in self._signers:
            return Rejection(Reason.UNKNOWN_KID, f"key set {jwks.revision} is signed by key "
                             f"{signer}, not by a key of the set in force")
        current = self.current
        if current is not None and jwks.revision == current.revision:
            return None  # published again (a worker's start): nothing changes
        if current is not None and jwks.published_at < current.published_at:
            return Rejection(Reason.STALE, f"key set {jwks.revision} was published at "
                             f"{jwks.published_at.isoformat()}, before the set in force "
                             f"({current.published_at.isoformat()})")
        listed = {k.kid for k in jwks.keys if k.kid}
        for kid, held in list(self._keys.items()):
            if kid not in listed and held.retired_at is None:
                self._keys[kid] = TrustedKey(held.jwk, jwks.published_at)
        for key in jwks.keys:
            if key.kid and (key.kid not in self._keys or self._keys[key.kid].retired_at):
                self._keys[key.kid] = TrustedKey(key)
        self._signers = frozenset(listed)
        self.current = jwks
        return None
