"""Clock skew (criterion 8): a resource-side token verifier 30 s off still refuses expired tokens
beyond the leeway (and honours live ones); a worker's wall clock 30 s off does not change a
grant's lifetime as Redis measures it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.crypto.tokens import BrokerKeyring
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import ms
from broker.config import Settings
from broker.errors import TokenRejected
from broker.identity.tokens import token_claims
from broker.policy import load_policy
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import (
    EscalationRequested,
    GrantIssued,
    GrantRenewed,
    RenewalDecided,
    RenewalRequested,
)
from schemas.signing import GRANT_TOKEN_TYPE
from tests.support.faults import world
from tests.support.faults.bundles import props_bundle
from tests.support.faults.report import Figures
from tests.support.identities import agent_client
from tests.support.waits import wait_until

SKEWS = (-30, 0, 30)
FREEZE = "payments:accounts.freeze"


def _verdict(verifier: GrantTokenVerifier, token: str, now: datetime) -> str:
    try:
        verifier.verify(token, now)
    except TokenRejected as exc:
        return exc.code
    return "accepted"


@pytest.mark.criterion("8")
def test_a_verifier_30s_off_refuses_expired_tokens_and_honours_live_ones(
    worker: object, settings: Settings, agents: Callable[[str], str], figures: Figures,
) -> None:
    """Clock -30/0/+30 s: a token expired 6 s ago (leeway 5 s) is refused; a fresh one is
    accepted by a clock behind or right (ahead, it may be refused as expired: fail closed)."""
    agent = agents("f")
    service = role_access(settings, topics.SERVICE)
    keyring = BrokerKeyring(settings.key_path("broker"))
    with JwksView(service) as jwks, GrantView(service) as view, \
            agent_client(settings, agent) as client:
        assert jwks.wait_ready(30) and view.wait_ready(30)
        d = client.request_escalation([FREEZE], resources=["acct-1"], duration_s=900,
                                      reason="skew", confidence=0.95, risk_score=0.9)
        assert d.grant_id
        grant_id = d.grant_id
        wait_until(lambda: view.grant_state(agent, grant_id) == "active", 30, "grant in view")
        grant = next(g for g in view.active(agent) if g.grant_id == grant_id)
        fresh = client.grant_token(grant_id, "payments").token
        real = datetime.now(UTC)
        claims = token_claims(grant, "payments", issuer=keyring.issuer,
                              now=real - timedelta(seconds=40), max_ttl_s=34)
        assert isinstance(claims, dict)  # issued 40 s ago, lived 34 s: expired 6 s ago
        expired = keyring.signing_key(real).sign_jwt(claims, GRANT_TOKEN_TYPE)
        exp = datetime.fromtimestamp(float(str(claims["exp"])), tz=UTC)
        verifier = GrantTokenVerifier(jwks, audience="payments", grants=view)
        wrong_expired, wrong_fresh = 0, 0
        for skew in SKEWS:
            now = datetime.now(UTC) + timedelta(seconds=skew)  # the verifier's wrong clock
            old, new = _verdict(verifier, expired, now), _verdict(verifier, fresh, now)
            figures.check(f"clock {skew:+d}s: token expired 6 s ago (exp {exp:%H:%M:%S})", old,
                          "refused (expired)", old == "expired")
            if skew <= 0:  # behind: the log's time floor keeps live tokens valid
                figures.check(f"clock {skew:+d}s: fresh token of the live grant", new,
                              "accepted", new == "accepted")
                wrong_fresh += new != "accepted"
            else:  # ahead by more than the token's life: refused as expired (fail closed)
                figures.check(f"clock {skew:+d}s: fresh token of the live grant", new,
                              "accepted, or refused as expired", new in ("accepted", "expired"))
            wrong_expired += old == "accepted"
        figures.equal("expired tokens accepted, over all skews", wrong_expired, 0)
        figures.equal("live tokens refused by a clock behind or right", wrong_fresh, 0)
    figures.verify()


@pytest.fixture
def skewed_wall_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[float], None]]:
    """Set the worker code's wall clock (``datetime.now`` in streams.*) off by some seconds."""
    import streams.escalations
    import streams.lifecycle
    import streams.worker

    offset = {"s": 0.0}

    class Skewed(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Skewed:  # type: ignore[override]
            real = datetime.now(UTC) + timedelta(seconds=offset["s"])
            return cls.fromtimestamp(real.timestamp(), tz=UTC)

    for module in (streams.escalations, streams.lifecycle, streams.worker):
        monkeypatch.setattr(module, "datetime", Skewed)
    yield lambda seconds: offset.__setitem__("s", seconds)


@pytest.mark.criterion("8")
def test_a_worker_clock_30s_off_does_not_change_a_grant_s_lifetime(
    tmp_path: Path, skewed_wall_clock: Callable[[float], None], figures: Figures,
) -> None:
    """Worker wall clock -30/0/+30 s: grant and renewal expiries are the Kafka append time plus
    the duration, and the Redis key's PXAT is exactly that, whatever the worker's clock says."""
    policy = load_policy(props_bundle(tmp_path / "bundle"))
    with world.redis_server() as url:
        for skew in SKEWS:
            skewed_wall_clock(skew)
            w = world.World(url, policy)
            try:
                lifetime, pxat_ok, renewed = _grant_and_renew(w)
            finally:
                w.close()
            figures.check(f"worker clock {skew:+d}s: grant lifetime (s)", lifetime, "= 20",
                          lifetime == 20)
            figures.check(f"worker clock {skew:+d}s: Redis PXAT = expires_at", str(pxat_ok),
                          "True", pxat_ok)
            figures.check(f"worker clock {skew:+d}s: renewal", renewed,
                          "renewed to append + 20 s, or refused (never moved otherwise)",
                          renewed in ("renewed exactly", "refused, expiry unchanged"))
    figures.verify()


def _grant_and_renew(w: world.World) -> tuple[float, bool, str]:
    """One 20 s grant, then a renewal 1 s later (append times on Redis's clock)."""
    agent = "pa-fraud-1"
    received = w.redis_now()
    req = EscalationRequested(request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=(FREEZE,),
                              resources=("acct-1",), duration_s=20, reason="skew",
                              confidence=0.95, risk_score=0.9, requested_at=received)
    w.run(w.escalations.on_escalation(w.incoming(topics.ESCALATIONS.name, req, received)))
    grant = next(e for e in w.captured.events(topics.GRANTS.name) if isinstance(e, GrantIssued))
    lifetime = (grant.expires_at - received).total_seconds()
    pxat_ok = w.sync.pexpiretime(keys.grant(agent, grant.grant_id)) == ms(grant.expires_at)
    later = received + timedelta(seconds=1)
    ren = RenewalRequested(request_id=f"ren-{uuid.uuid4()}", agent_id=agent,
                           grant_id=grant.grant_id, duration_s=20, reason="skew",
                           confidence=0.95, risk_score=0.9, requested_at=later)
    w.run(w.escalations.on_escalation(w.incoming(topics.ESCALATIONS.name, ren, later)))
    answer = next(e for e in w.captured.events(topics.DECISIONS.name)
                  if isinstance(e, RenewalDecided))
    pxat = w.sync.pexpiretime(keys.grant(agent, grant.grant_id))
    if answer.outcome == "renewed":
        moved = [e for e in w.captured.events(topics.GRANTS.name) if isinstance(e, GrantRenewed)]
        exact = answer.expires_at == later + timedelta(seconds=20) and pxat == ms(
            later + timedelta(seconds=20)) and len(moved) == 1
        return lifetime, pxat_ok, "renewed exactly" if exact else f"renewed to {answer.expires_at}"
    unchanged = pxat == ms(grant.expires_at)
    return lifetime, pxat_ok, ("refused, expiry unchanged" if unchanged
                               else f"refused but PXAT moved to {pxat}")
