"""The broker's JWKS on Kafka: a view that follows the compacted JWKS topic. Imports follow, bus.

Also imports schemas. Resource services verify grant tokens with the keys this view holds and
nothing else: a token's ``jku``/``x5u`` is never fetched. ``document()`` is the JWK Set to serve
at ``/.well-known/jwks.json``.
"""

from __future__ import annotations

import threading

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.follow import Follower
from schemas.events import JwksPublished, PublicJwk
from schemas.topics import JWKS


class JwksView:
    """The latest published key set of an issuer, kept current in a thread."""

    def __init__(self, kafka: KafkaAccess, *, issuer: str = "permbroker") -> None:
        self.issuer = issuer
        self._latest: JwksPublished | None = None
        self._lock = threading.Lock()
        self._follower = Follower(kafka, JWKS.name, self._on_record, name="permbroker-jwks")

    def _on_record(self, rec: Record) -> None:
        ev = rec.event
        if isinstance(ev, JwksPublished) and ev.issuer == self.issuer:
            with self._lock:
                if self._latest is None or ev.published_at >= self._latest.published_at:
                    self._latest = ev

    def get(self, kid: str) -> PublicJwk | None:
        """The published key with this kid, if any (no network call, no fetching)."""
        with self._lock:
            keys = self._latest.keys if self._latest is not None else ()
        return next((k for k in keys if k.kid == kid), None)

    def document(self) -> dict[str, object]:
        """The JWK Set ``{"keys": [...]}`` (empty until a set was published)."""
        with self._lock:
            latest = self._latest
        return latest.document() if latest is not None else {"keys": []}

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the key set present at start is loaded."""
        return self._follower.wait_ready(timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until the latest published key set is loaded."""
        return self._follower.sync(timeout)

    def close(self) -> None:
        """Stop following."""
        self._follower.close()

    def __enter__(self) -> JwksView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
