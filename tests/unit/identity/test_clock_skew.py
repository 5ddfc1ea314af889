"""A verifier whose clock runs behind: the grant log's time floor keeps expired tokens refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import BrokerKey, write_keyring
from broker.adapters.crypto.tokens import BrokerKeyring, mint_grant_token
from broker.delivery.freshness import BrokerClock
from broker.errors import TokenRejected
from broker.sdk.resource.tokens import GrantTokenVerifier, StaticKeys
from schemas.events import GrantIssued

NOW = datetime.now(UTC).replace(microsecond=0)
GRANT = GrantIssued(
    grant_id="grant-1", agent_id="fraud-1", request_id="req-1",
    scopes=("payments:accounts.freeze",), resources=("acct-1",), issued_at=NOW,
    expires_at=NOW + timedelta(seconds=900), policy_revision="sha256:ab", rules=("r",))


class Log:
    """A grant view's answers: the grant is active; the log proves the broker reached ``floor``."""

    def __init__(self, floor: datetime | None) -> None:
        self.floor = floor

    def grant_state(self, agent_id: str, grant_id: str) -> str:
        return "active"

    def time_floor(self) -> datetime | None:
        return self.floor


@pytest.fixture
def keyring(tmp_path: Path) -> BrokerKeyring:
    """A keyring file with one active key."""
    path = tmp_path / "broker.json"
    write_keyring(path, "permbroker", [BrokerKey(SigningKey.generate(), NOW, NOW)])
    return BrokerKeyring(path)


def _verifier(keyring: BrokerKeyring, log: Log | None) -> GrantTokenVerifier:
    return GrantTokenVerifier(StaticKeys(keyring.jwks(NOW).document()), audience="payments",
                              grants=log)


def test_a_clock_30s_behind_refuses_a_token_expired_beyond_the_leeway(
    keyring: BrokerKeyring,
) -> None:
    """Token expired 6 s ago (leeway 5 s), verifier 30 s behind: refused given the log's floor;
    without a floor its own clock would have accepted it (what the floor is for)."""
    token, exp = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=30)
    real = exp + timedelta(seconds=6)
    behind = real - timedelta(seconds=30)
    with pytest.raises(TokenRejected) as info:
        _verifier(keyring, Log(real)).verify(token, behind)
    assert info.value.code == "expired"
    assert _verifier(keyring, Log(None)).verify(token, behind).grant_id == "grant-1"


def test_a_clock_30s_ahead_is_not_pulled_back_by_the_floor(keyring: BrokerKeyring) -> None:
    """The floor only raises ``now``: a clock ahead still refuses what it sees as expired."""
    token, exp = mint_grant_token(GRANT, "payments", keyring, now=NOW, max_ttl_s=30)
    with pytest.raises(TokenRejected, match="expired"):
        _verifier(keyring, Log(NOW)).verify(token, exp + timedelta(seconds=6))


def test_broker_clock_is_append_time_plus_monotonic_elapsed() -> None:
    """Floor = newest stamp + time since it was read; an older stamp never lowers it."""
    t = [100.0]
    clock = BrokerClock(lambda: t[0])
    assert clock.floor_s() == 0.0
    clock.seen(1_000.0)
    t[0] += 7.5
    assert clock.floor_s() == 1_007.5
    clock.seen(900.0)  # an old record read late
    assert clock.floor_s() == 1_007.5
    clock.seen(1_010.0)
    t[0] += 1
    assert clock.floor_s() == 1_011.0
