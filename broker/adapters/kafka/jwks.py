"""The broker's key sets on Kafka, as a reader's chain of trust accepts them. Imports follow, trust.

Also imports the decode edge, config and schemas. ``JwksView`` follows the JWKS topic from its
start and hands every signed key set to its ``RecordTrust``: a set is accepted only when a key of
the set in force signed it (at first, the trust anchor's), never for being newer; a set the chain
refuses is counted and reported like any refused record and changes nothing. The view also keeps
its trust current: a record signed by a key id not seen yet makes the trust catch up here.

Resource services verify grant tokens with the keys of the set in force and nothing else (a
token's ``jku``/``x5u`` is never fetched). ``document()`` is the JWK Set to serve at
``/.well-known/jwks.json``.
"""

from __future__ import annotations

import dataclasses

from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.edge import Record, Refusals
from broker.adapters.kafka.follow import Follower
from broker.config import Settings
from schemas.events import JwksPublished, PublicJwk
from schemas.topics import JWKS

READER = "jwks"


class JwksView:
    """A reader's chain of trust, kept current from the JWKS topic in a thread."""

    def __init__(self, kafka: KafkaAccess, trust: RecordTrust) -> None:
        self.trust = trust
        self.issuer = trust.issuer
        self._follower = Follower(kafka, JWKS.name, self._on_record, trust=trust,
                                  reader=READER, name="permbroker-jwks")
        trust.follow(self._follower.sync)

    @classmethod
    def from_settings(cls, settings: Settings, kafka: KafkaAccess, *, wait_s: float = 30.0,
                      refusals: Refusals | None = None) -> JwksView:
        """The trust of a process configured by ``settings`` (anchor and services files), with
        the key sets published so far applied (KeyFileError when the anchor is missing)."""
        trust = RecordTrust.from_files(settings.key_path("trust-anchor"),
                                       settings.key_path("services"),
                                       leeway_s=settings.signature_max_skew_s, refusals=refusals)
        view = cls(kafka, trust)
        view.wait_ready(wait_s)
        return view

    def _on_record(self, rec: Record) -> None:
        if not isinstance(rec.event, JwksPublished):
            return
        problem = self.trust.accept(rec.event, rec.kid)
        if problem is not None:
            self.trust.refusals.add(READER, dataclasses.replace(
                rec, event=None, reason=problem.code.value, error=problem.detail))

    def get(self, kid: str) -> PublicJwk | None:
        """A key of the set in force with this kid (no network call, no fetching)."""
        return self.trust.get(kid)

    def current(self) -> JwksPublished | None:
        """The key set in force (None while only the anchor is known)."""
        return self.trust.current()

    def document(self) -> dict[str, object]:
        """The JWK Set ``{"keys": [...]}`` of the keys in force."""
        current = self.trust.current()
        if current is not None:
            return current.document()
        return {"keys": [k.model_dump(mode="json", exclude_none=True)
                         for k in self.trust.in_force()]}

    def wait_ready(self, timeout: float = 30.0) -> bool:
        """Block until the key sets present at start are applied."""
        return self._follower.wait_ready(timeout)

    def sync(self, timeout: float = 10.0) -> bool:
        """Block until every key set published so far is applied."""
        return self._follower.sync(timeout)

    def close(self) -> None:
        """Stop following."""
        self._follower.close()

    def __enter__(self) -> JwksView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
