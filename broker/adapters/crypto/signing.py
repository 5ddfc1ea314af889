"""Event signatures on the wire: sign an encoded message, read and verify its ``ce_signature``.

Imports pyjwt (through jose), schemas, broker.identity/errors and the codec's ``Encoded``.

The signature is a compact JWS (a JWT of type ``permbroker-event+jwt``) whose claims bind the
SHA-256 of the exact value bytes, the CloudEvents id and type and the Kafka key, with ``iat``
and a fresh ``jti`` nonce; ``docs/protocol.md`` specifies it for implementers in any language.
Verification here is cryptographic only: the rules (which key, how fresh, who may do what) are
``broker.identity``'s, so they stay pure and unit-tested.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.adapters.crypto.jose import SigningKey, compact_header, verify_compact
from broker.adapters.kafka.codec import Encoded
from broker.errors import IdentityError
from broker.identity.rules import EventClaims, MessageFacts, Reason, Rejection, value_digest
from schemas.events import PublicJwk
from schemas.signing import BROKER_AUDIENCE, EVENT_CLAIMS, EVENT_TOKEN_TYPE, SIGNATURE_HEADER

MAX_SIGNATURE_BYTES = 4096


def header_value(headers: Iterable[tuple[str, bytes | str | None]], name: str) -> str | None:
    """The (last) value of one Kafka header as text, or None."""
    found = None
    for key, value in headers:
        if key.lower() == name and value is not None:
            found = value.decode(errors="replace") if isinstance(value, bytes) else value
    return found


def sign_message(message: Encoded, key: SigningKey, issuer: str,
                 now: datetime | None = None) -> Encoded:
    """The same message with a ``ce_signature`` header by ``key`` (replacing any earlier one)."""
    headers = [(k, v) for k, v in message.headers if k.lower() != SIGNATURE_HEADER]
    ce_id, ce_type = header_value(headers, "ce_id"), header_value(headers, "ce_type")
    if ce_id is None or ce_type is None:
        raise IdentityError("cannot sign a message without ce_id and ce_type headers")
    claims = {
        "iss": issuer, "aud": BROKER_AUDIENCE,
        "iat": int((now or datetime.now(UTC)).timestamp()), "jti": secrets.token_urlsafe(16),
        "ce_id": ce_id, "ce_type": ce_type,
        "key": message.key.decode() if message.key is not None else "",
        "digest": value_digest(message.value),
    }
    token = key.sign_jwt(claims, EVENT_TOKEN_TYPE)
    return Encoded(key=message.key, value=message.value,
                   headers=[*headers, (SIGNATURE_HEADER, token.encode())])


@dataclass(frozen=True)
class Presented:
    """A signature as presented (header read, nothing verified yet): which key it names."""

    token: str
    kid: str
    alg: str


def presented(headers: Iterable[tuple[str, bytes | str | None]]) -> Presented | Rejection | None:
    """The message's signature header parsed (None when unsigned), or why it is malformed."""
    token = header_value(headers, SIGNATURE_HEADER)
    if token is None:
        return None
    head = compact_header(token, typ=EVENT_TOKEN_TYPE, what="signature",
                          max_bytes=MAX_SIGNATURE_BYTES)
    if isinstance(head, Rejection):
        return head
    return Presented(token=token, kid=head[0], alg=head[1])


def verify_claims(sig: Presented, jwk: PublicJwk) -> EventClaims | Rejection:
    """Check the signature with the registered key (its algorithm, never the token's)."""
    data = verify_compact(sig.token, sig.kid, sig.alg, jwk, audience=BROKER_AUDIENCE,
                          required=EVENT_CLAIMS, what="signature")
    return data if isinstance(data, Rejection) else _claims(data)


def _claims(data: dict[str, object]) -> EventClaims | Rejection:
    iat, key = data.get("iat"), data.get("key")
    text = {name: data.get(name) for name in ("iss", "aud", "jti", "ce_id", "ce_type", "digest")}
    if not isinstance(iat, int) or isinstance(iat, bool) or not all(
            isinstance(v, str) and v for v in text.values()) or not isinstance(key, str):
        return Rejection(Reason.MALFORMED, "signature claims have the wrong types")
    return EventClaims(iss=str(text["iss"]), aud=str(text["aud"]), iat=iat, jti=str(text["jti"]),
                       ce_id=str(text["ce_id"]), ce_type=str(text["ce_type"]), key=key,
                       digest=str(text["digest"]))


def facts(key: bytes | None, value: bytes | None,
          headers: Iterable[tuple[str, bytes | str | None]], received_at: datetime) -> MessageFacts:
    """What a signature must bind, read from the message as it sits in Kafka."""
    items = list(headers)
    return MessageFacts(
        ce_id=header_value(items, "ce_id") or "", ce_type=header_value(items, "ce_type") or "",
        key=key.decode(errors="replace") if key is not None else "",
        digest=value_digest(value or b""), received_at=received_at)
