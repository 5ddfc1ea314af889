"""Benchmark 10: what signing and verifying cost per record (in process, no services).

Imports broker and schemas. The broker signs every record it writes (``sign_message``: an EdDSA
JWS over the value's digest, id, type and key) and every reader verifies it at the decode edge
(``edge.read`` with a ``RecordTrust``) before applying it. Each arm handles one grant record of
the shape the worker publishes; the references are the same steps without the signature:
encoding the CloudEvent, and reading it through the edge with no trust (decode and validate).
A resource service verifies a grant token (``GrantTokenVerifier.verify``: header checks, the key
of the set in force, signature, claims, times); its reference is pyjwt's bare decode of the same
token with the same key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from bench.measures.micro import batches
from bench.stats import Arm
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka import edge
from broker.adapters.kafka.codec import encode
from broker.identity.keychain import KeyChain
from broker.identity.tokens import token_claims
from broker.sdk.resource.tokens import GrantTokenVerifier, StaticKeys
from schemas import topics
from schemas.events import GrantIssued
from schemas.signing import GRANT_TOKEN_TYPE

ISSUER = "permbroker"
ARMS = {
    "encode": ("encode a grant record (CloudEvent, unsigned)", "us"),
    "sign": ("encode and sign it (broker key, EdDSA)", "us"),
    "read": ("read it at the decode edge, no trust (decode, validate)", "us"),
    "verify": ("read it at the decode edge, verified (signature, key chain)", "us"),
    "token": ("verify a grant token (GrantTokenVerifier)", "us"),
    "pyjwt": ("pyjwt decode of the same token (EdDSA, same key)", "us"),
}


def grant() -> GrantIssued:
    """A grant record of the size the fraud policy issues."""
    now = datetime.now(UTC)
    return GrantIssued(grant_id="g-bench-0001", agent_id="bench-trust-0001",
                       request_id="r-bench-0001",
                       scopes=("payments:accounts.freeze", "crm:customer.pii.read"),
                       resources=("acct-4411-0923", "acct-4411-0924"), issued_at=now,
                       expires_at=now + timedelta(minutes=15), policy_revision="sha256:ab",
                       rules=("fraud-freeze",))


def trust_rounds(rounds: int, say: Any) -> dict[str, Arm]:
    """Every arm once per round, 2,000 records each (per-call means of batches of 10)."""
    arms = {k: Arm(name, unit) for k, (name, unit) in ARMS.items()}
    key = SigningKey.generate()
    trust = RecordTrust(KeyChain(ISSUER, [key.jwk]))
    event = grant()
    signed = sign_message(encode(event, source="/bench"), key, ISSUER)
    topic = topics.GRANTS.name

    def read(with_trust: RecordTrust | None) -> object:
        rec = edge.read(topic, 0, 0, 0, signed.key, signed.value, signed.headers,
                        trust=with_trust, reader="bench")
        assert rec.event is not None, rec
        return rec

    read(trust)  # the signature verifies before anything is timed
    claims = token_claims(event, "payments", issuer=ISSUER, now=datetime.now(UTC), max_ttl_s=60)
    assert isinstance(claims, dict), claims
    token = key.sign_jwt(claims, GRANT_TOKEN_TYPE)
    verifier = GrantTokenVerifier(StaticKeys({"keys": [key.jwk.model_dump(exclude_none=True)]}),
                                  audience="payments", issuer=ISSUER)
    verifier.verify(token)  # a valid token before anything is timed

    def bare() -> object:
        return jwt.decode(token, key.private.public_key(), algorithms=[key.alg],
                          audience="payments", issuer=ISSUER)
    for r in range(rounds):
        arms["encode"].add_round(batches(lambda: encode(event, source="/bench"), 200))
        arms["sign"].add_round(batches(
            lambda: sign_message(encode(event, source="/bench"), key, ISSUER), 200))
        arms["read"].add_round(batches(lambda: read(None), 200))
        arms["verify"].add_round(batches(lambda: read(trust), 200))
        arms["token"].add_round(batches(lambda: verifier.verify(token), 200))
        arms["pyjwt"].add_round(batches(bare, 200))
        say(f"trust: round {r + 1}/{rounds}: sign {arms['sign'].round_stat(r, 50):.0f} us, "
            f"verify {arms['verify'].round_stat(r, 50):.0f} us per record")
    return arms
