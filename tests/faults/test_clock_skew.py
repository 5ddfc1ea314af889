"""Clock skew (criterion 8): a resource-side token verifier 30 s off still refuses expired tokens
beyond the leeway (and honours live ones); Redis's clock 30 s off Kafka's gives one outcome.

The worker decides with two clocks: the request's time is Kafka's (its append time) and ``now``
is Redis's (TIME, read in the decision's snapshot; renewals and releases read it too), the clock
that also expires every key. Only their difference matters, so a Redis whose clock is ``s``
seconds ahead of Kafka's is reproduced exactly by a real redis-server (its own clock for
``now`` and for every key's expiry) fed requests appended ``s`` seconds before its clock says:
the property world hands the worker's handlers each message with that append time. (A
redis-server started under libfaketime would skew Redis itself; it does not start here: its
jemalloc recurses into the faked clock_gettime.)
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.crypto.tokens import BrokerKeyring
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import ms
from broker.config import Settings
from broker.errors import TokenRejected
from broker.grants.decide import derive_id
from broker.identity.tokens import token_claims
from broker.policy import load_policy
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import (
    EscalationDecided,
    EscalationRequested,
    GrantRenewed,
    RenewalDecided,
    RenewalRequested,
)
from schemas.signing import GRANT_TOKEN_TYPE
from tests.support.faults.bundles import props_bundle
from tests.support.faults.model import world
from tests.support.faults.model.gate import Identities
from tests.support.faults.report import Figures
from tests.support.identities import agent_client, shared_trust
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
    with JwksView.from_settings(settings, service) as jwks, \
            GrantView(service, trust=shared_trust(settings)) as view, \
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


@pytest.mark.criterion("8")
def test_a_redis_clock_30s_off_kafka_s_gives_one_outcome_per_skew(
    tmp_path: Path, figures: Figures,
) -> None:
    """Redis's clock 30 s behind Kafka's, right, or 30 s ahead. Behind or right: the grant expires
    exactly 20 s after the append time (and its key at that PXAT), a renewal 1 s later renews it
    to its own append time + 20 s. Ahead by more than the grant's life: the request is denied
    (rule stale-request, no key written) and the renewal finds no grant (grant-not-active)."""
    policy = load_policy(props_bundle(tmp_path / "bundle"))
    ids = Identities(tmp_path / "ids", policy)
    expected = {-30: ("granted for 20 s, PXAT = expires_at", "renewed to append + 20 s"),
                0: ("granted for 20 s, PXAT = expires_at", "renewed to append + 20 s"),
                30: ("denied: stale-request, no key", "denied: grant-not-active")}
    with world.redis_server() as url:
        for skew in SKEWS:
            w = world.World(url, policy, ids)
            try:
                granted, renewed = _grant_and_renew(w, skew)
            finally:
                w.close()
            want_grant, want_renewal = expected[skew]
            figures.check(f"Redis {skew:+d}s from Kafka: the request", granted, want_grant,
                          granted == want_grant)
            figures.check(f"Redis {skew:+d}s from Kafka: its renewal 1 s later", renewed,
                          want_renewal, renewed == want_renewal)
    figures.verify()


def _grant_and_renew(w: world.World, skew: int) -> tuple[str, str]:
    """A 20 s request appended ``skew`` s before Redis's now, a renewal appended 1 s after it."""
    agent = "pa-fraud-1"
    received = w.redis_now() - timedelta(seconds=skew)  # Kafka's clock, as Redis sees it
    req = EscalationRequested(request_id=f"req-{uuid.uuid4()}", agent_id=agent, scopes=(FREEZE,),
                              resources=("acct-1",), duration_s=20, reason="skew",
                              confidence=0.95, risk_score=0.9, requested_at=received)
    w.run(w.escalations.on_escalation(w.incoming(topics.ESCALATIONS.name, req, received)))
    (decided,) = [e for e in w.events(topics.DECISIONS.name)
                  if isinstance(e, EscalationDecided)]
    grant_id = derive_id("grant", req.request_id, agent)
    pxat = w.sync.pexpiretime(keys.grant(agent, grant_id))
    if decided.outcome == "granted" and decided.expires_at is not None:
        exact = decided.expires_at == received + timedelta(seconds=20) and \
            pxat == ms(decided.expires_at)
        granted = "granted for 20 s, PXAT = expires_at" if exact else \
            f"granted until {decided.expires_at}, PXAT {pxat}"
    else:
        granted = f"denied: {','.join(decided.matched_rules)}" + (", no key" if pxat == -2 else "")
    later = received + timedelta(seconds=1)
    ren = RenewalRequested(request_id=f"ren-{uuid.uuid4()}", agent_id=agent, grant_id=grant_id,
                           duration_s=20, reason="skew", confidence=0.95, risk_score=0.9,
                           requested_at=later)
    w.run(w.escalations.on_escalation(w.incoming(topics.ESCALATIONS.name, ren, later)))
    (answer,) = [e for e in w.events(topics.DECISIONS.name)
                 if isinstance(e, RenewalDecided)]
    if answer.outcome != "renewed":
        return granted, f"denied: {answer.rule}"
    target = later + timedelta(seconds=20)
    moved = [e for e in w.events(topics.GRANTS.name) if isinstance(e, GrantRenewed)]
    exact = answer.expires_at == target and len(moved) == 1 and \
        w.sync.pexpiretime(keys.grant(agent, grant_id)) == ms(target)
    return granted, "renewed to append + 20 s" if exact else f"renewed to {answer.expires_at}"
