"""Grant tokens: minted claims, the resource-side verifier against token attacks, key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from joserfc import jwk as jose_jwk
from joserfc import jwt as jose_jwt
from joserfc.jwt import JWTClaimsRegistry

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import BrokerKey, write_keyring
from broker.adapters.crypto.tokens import BrokerKeyring, mint_grant_token
from broker.errors import TokenRejected
from broker.sdk.resource.tokens import GrantTokenVerifier, StaticKeys
from schemas.events import GrantIssued
from schemas.signing import GRANT_TOKEN_TYPE

NOW = datetime.now(UTC).replace(microsecond=0)
GRANT = GrantIssued(
    grant_id="grant-1", agent_id="fraud-1", request_id="req-1",
    scopes=("payments:accounts.freeze", "crm:customer.pii.read"), resources=("acct-1",),
    issued_at=NOW, expires_at=NOW + timedelta(seconds=20), policy_revision="sha256:ab",
    rules=("r",), model_version="3.2", model_digest="sha256:aa", kid="agent-kid-1")


@pytest.fixture
def keyring(tmp_path: Path) -> BrokerKeyring:
    """A keyring file with one active key."""
    path = tmp_path / "broker.json"
    write_keyring(path, "permbroker", [BrokerKey(SigningKey.generate(), NOW, NOW)])
    return BrokerKeyring(path)


def verifier(keyring: BrokerKeyring, at: datetime = NOW) -> GrantTokenVerifier:
    return GrantTokenVerifier(StaticKeys(keyring.jwks(at).document()), audience="payments")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any], claims: dict[str, Any], sign: Any = None) -> str:
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + (b64(sign(head.encode())) if sign else "")


def claims(**changes: Any) -> dict[str, Any]:
    iat = int(NOW.timestamp())
    return {"iss": "permbroker", "aud": "payments", "sub": "fraud-1", "jti": "grant-1",
            "scope": "payments:accounts.freeze", "resources": ["acct-1"], "iat": iat,
            "nbf": iat, "exp": iat + 20} | changes


def signed(keyring: BrokerKeyring, header: dict[str, Any] | None = None, **changes: Any) -> str:
    key = keyring.signing_key(NOW)


    extra = {"kid": key.kid, "typ": GRANT_TOKEN_TYPE} | (header or {})
    return jwt.encode(claims(**changes), key.private, algorithm="EdDSA", headers=extra)


def refused(v: GrantTokenVerifier, token: str, code: str, now: datetime = NOW) -> None:
    with pytest.raises(TokenRejected) as info:
        v.verify(token, now)
    assert info.value.code == code, info.value


def test_minted_token_is_narrow_short_and_for_one_service(keyring: BrokerKeyring) -> None:
    """Only the audience's scopes; exp <= min(grant expiry, now + 60 s); jti = grant id."""
    token, exp = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=60)
    got = verifier(keyring).verify(token, NOW)
    assert got.scopes == ("payments:accounts.freeze",) and got.grant_id == "grant-1"
    assert got.agent_id == "fraud-1" and exp == GRANT.expires_at == got.expires_at
    assert got.allows("payments:accounts.freeze", "acct-1")
    assert not got.allows("payments:accounts.freeze", "acct-2")
    long_grant = GRANT.model_copy(update={"expires_at": NOW + timedelta(hours=1)})
    _token, capped = mint_grant_token(long_grant, "payments", keyring, now=NOW, max_ttl_s=60)
    assert capped == NOW + timedelta(seconds=60)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["typ"] == GRANT_TOKEN_TYPE and header["alg"] == "EdDSA"


def test_alg_none_is_refused(keyring: BrokerKeyring) -> None:
    """An unsigned token (alg none) is refused whatever it claims."""
    kid = keyring.signing_key(NOW).kid
    token = raw_token({"alg": "none", "typ": GRANT_TOKEN_TYPE, "kid": kid}, claims())
    refused(verifier(keyring), token, "alg-not-allowed")


def test_hs256_signed_with_the_public_key_is_refused(keyring: BrokerKeyring) -> None:
    """The key-confusion attack: HMAC keyed with the broker's public key bytes."""
    public = keyring.jwks(NOW).keys[0]
    kid = public.kid
    for secret in (public.x.encode(), base64.urlsafe_b64decode(public.x + "="),
                   json.dumps(public.model_dump(exclude_none=True)).encode()):
        token = raw_token({"alg": "HS256", "typ": GRANT_TOKEN_TYPE, "kid": kid}, claims(),
                          lambda data, s=secret: hmac.new(s, data, hashlib.sha256).digest())
        refused(verifier(keyring), token, "alg-not-allowed")


def test_unknown_kid_is_refused(keyring: BrokerKeyring) -> None:
    """A well-formed token signed by a key that is not published is refused."""
    stranger = SigningKey.generate()


    token = jwt.encode(claims(), stranger.private, algorithm="EdDSA",
                       headers={"kid": stranger.kid, "typ": GRANT_TOKEN_TYPE})
    refused(verifier(keyring), token, "unknown-kid")


@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "1' OR '1'='1", "kid; DROP TABLE k",
                                 "/dev/null", "http://evil.example/key", "", "x" * 200])
def test_kid_with_path_or_sql_content_is_refused(keyring: BrokerKeyring, kid: str) -> None:
    """A kid is looked up only if it is a plain key id; paths and SQL never reach a lookup."""
    refused(verifier(keyring), signed(keyring, {"kid": kid}), "bad-kid")


@pytest.fixture
def trap() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request (a jku/x5u must never be fetched)."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"keys": []}')

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize("param", ["jku", "x5u"])
def test_jku_and_x5u_are_refused_and_never_fetched(
    keyring: BrokerKeyring, trap: tuple[str, list[str]], param: str
) -> None:
    """A header pointing at keys elsewhere is refused; the URL receives no request."""
    url, hits = trap
    refused(verifier(keyring), signed(keyring, {param: f"{url}/jwks.json"}),
            "header-not-accepted")
    assert hits == []


@pytest.mark.parametrize("change, code", [({"aud": "crm"}, "wrong-aud"),
                                          ({"iss": "someone-else"}, "wrong-iss")])
def test_wrong_audience_or_issuer_is_refused(
    keyring: BrokerKeyring, change: dict[str, str], code: str
) -> None:
    """A token for another service, or from another issuer, is refused."""
    refused(verifier(keyring), signed(keyring, **change), code)


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "permbroker-event+jwt", None])
def test_wrong_typ_is_refused(keyring: BrokerKeyring, typ: str | None) -> None:
    """Only permbroker-grant+jwt: an event signature or an access token is not a grant token."""
    token = signed(keyring, {"typ": typ}) if typ else raw_token(
        {"alg": "EdDSA", "kid": keyring.signing_key(NOW).kid}, claims())
    refused(verifier(keyring), token, "wrong-typ")


def test_exp_is_refused_just_outside_the_leeway_and_accepted_just_inside(
    keyring: BrokerKeyring,
) -> None:
    """Leeway 5 s: accepted at exp + 4 s, refused at exp + 5 s."""
    token, exp = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=60)
    v = verifier(keyring)
    assert v.verify(token, exp + timedelta(seconds=4)).grant_id == "grant-1"
    refused(v, token, "expired", exp + timedelta(seconds=5))


def test_nbf_is_refused_just_outside_the_leeway_and_accepted_just_inside(
    keyring: BrokerKeyring,
) -> None:
    """Leeway 5 s: accepted 5 s before nbf, refused 6 s before."""
    nbf = int(NOW.timestamp()) + 30
    token = signed(keyring, nbf=nbf, iat=nbf, exp=nbf + 20)
    v = verifier(keyring)
    start = datetime.fromtimestamp(nbf, tz=UTC)
    assert v.verify(token, start - timedelta(seconds=5)).grant_id == "grant-1"
    refused(v, token, "not-yet-valid", start - timedelta(seconds=6))


def test_a_token_living_longer_than_allowed_is_refused(keyring: BrokerKeyring) -> None:
    """Even well signed, a token whose exp - iat exceeds the maximum is not a grant token."""
    refused(verifier(keyring), signed(keyring, exp=int(NOW.timestamp()) + 3600),
            "lifetime-too-long")


# joserfc warns that RFC 9864 deprecates the polymorphic "EdDSA" alg name (for "Ed25519"); the
# documented protocol, pyjwt and the broker sign with "EdDSA", which is what this interop checks.
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_a_foreign_jose_library_verifies_with_the_published_jwks_only(
    keyring: BrokerKeyring,
) -> None:
    """joserfc (not pyjwt) validates a grant token using nothing but the JWKS document."""
    token, _exp = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=60)
    jwks = json.loads(json.dumps(keyring.jwks(NOW).document()))  # as served, plain JSON
    keys = jose_jwk.KeySet.import_key_set(jwks)
    decoded = jose_jwt.decode(token, keys, algorithms=["EdDSA"])
    JWTClaimsRegistry(iss={"essential": True, "value": "permbroker"},
                      aud={"essential": True, "value": "payments"},
                      now=int(NOW.timestamp())).validate(decoded.claims)
    assert decoded.header["typ"] == GRANT_TOKEN_TYPE
    assert decoded.claims["jti"] == "grant-1" and decoded.claims["sub"] == "fraud-1"


def test_broker_key_rotation_overlaps_then_retires(keyring: BrokerKeyring) -> None:
    """During the overlap old and new tokens verify (0 failures); after it, old ones never do."""
    old, _ = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=60)
    new_kid = keyring.rotate(NOW, overlap_s=30, lead_s=1)
    during = NOW + timedelta(seconds=2)
    assert keyring.signing_key(NOW).kid != new_kid  # the new key is published before it signs
    assert keyring.signing_key(during).kid == new_kid
    new, _ = mint_grant_token(GRANT, "payments", keyring, now=during, max_ttl_s=60)
    overlap = [verifier(keyring, NOW + timedelta(seconds=s)) for s in range(0, 31, 3)]
    assert all(v.verify(t, during).grant_id for v in overlap for t in (old, new))
    after = verifier(keyring, NOW + timedelta(seconds=31 + 1))
    refused(after, old, "unknown-kid", during)
    assert after.verify(new, during).kid == new_kid


def test_a_repeated_rotation_command_rotates_once(keyring: BrokerKeyring) -> None:
    """The same cause (a redelivered command) adds no second key."""
    first = keyring.rotate(NOW, overlap_s=30, cause="cmd-1")
    again = keyring.rotate(NOW + timedelta(seconds=1), overlap_s=30, cause="cmd-1")
    assert first == again and len(keyring.jwks(NOW).keys) == 2
