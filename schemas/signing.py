"""Names of the identity protocol: signature header, token types, claims. Imports stdlib only.

Spelled here once for the broker, the SDKs, the generator and ``docs/protocol.md``.

An agent signs every event it publishes with its own key: the Kafka header ``ce_signature``
(the CloudEvents extension attribute ``signature`` in binary mode) carries a compact JWS, a JWT
of type ``permbroker-event+jwt`` whose claims bind the SHA-256 of the exact value bytes, the
CloudEvents id and type, the Kafka key, the time of signing and a fresh nonce.
"""

from __future__ import annotations

SIGNATURE_HEADER = "ce_signature"
# JOSE "typ" values (media types), not secrets.
EVENT_TOKEN_TYPE = "permbroker-event+jwt"  # noqa: S105
GRANT_TOKEN_TYPE = "permbroker-grant+jwt"  # noqa: S105
ENROLLMENT_TOKEN_TYPE = "permbroker-enroll+jwt"  # noqa: S105
API_ASSERTION_TYPE = "permbroker-api+jwt"  # an operator's, agent's or service's HTTP credential
# The audience of event signatures and enrollment tokens: the broker itself.
BROKER_AUDIENCE = "permbroker"
SIGNING_ALGORITHMS = ("EdDSA", "ES256")

# Claims of an event signature (all required).
EVENT_CLAIMS = ("iss", "aud", "iat", "jti", "ce_id", "ce_type", "key", "digest")
# The audience of API assertions: the permbroker HTTP API (and the workers it relays to).
API_AUDIENCE = "permbroker-api"
# Claims of an API assertion (all required): who (iss), for which call (htm: method, htu: path),
# when (iat, exp: a short life) and a nonce (jti: each assertion is used once).
ASSERTION_CLAIMS = ("iss", "aud", "iat", "exp", "jti", "htm", "htu")
# The Kafka header on a record the API relays: the assertion of the principal it acts for.
ASSERTION_HEADER = "pb_assertion"
# Claims every grant token carries.
GRANT_CLAIMS = ("iss", "aud", "sub", "scope", "jti", "iat", "nbf", "exp")
# An operator principal id is "operator:<name>"; agent ids never contain this prefix's colon
# form at the start, so the two namespaces never meet.
OPERATOR_PREFIX = "operator:"
# A resource service (an enforcement point; the HTTP API is one) is "service:<name>": it signs
# its acks, usage reports and the calls it relays with a key listed in the services file.
SERVICE_PREFIX = "service:"
