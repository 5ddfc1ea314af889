"""Grant tokens end to end: minted by the worker, verified by a resource service, revocation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.errors import CommandRefused, TokenRejected
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import GrantReleased
from tests.support.factories import anomaly
from tests.support.identities import agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"


def test_revoked_or_released_grants_tokens_are_refused_before_they_expire(
    worker: object, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str],
) -> None:
    """A token verifies while its grant lives; after the revocation (or a release) the same
    unexpired token is refused, and no new token is issued for that grant."""
    revoked_agent, releasing_agent = agents("f"), agents("f")
    grants = tap(topics.GRANTS.name)
    service = role_access(settings, topics.SERVICE)
    with JwksView(service) as jwks, GrantView(service) as view, \
            agent_client(settings, revoked_agent) as a, \
            agent_client(settings, releasing_agent) as b:
        assert jwks.wait_ready(30) and view.wait_ready(30)
        payments = GrantTokenVerifier(jwks, audience="payments", grants=view)
        tokens = {}
        for client in (a, b):
            d = client.request_escalation([FREEZE, PII], resources=["acct-1"], duration_s=900,
                                          reason="pattern", confidence=0.95, risk_score=0.9)
            assert d.grant_id
            wait_until(lambda gid=d.grant_id, c=client: view.grant_state(c.agent_id, gid)
                       == "active", 10, "grant in the view")
            tokens[client.agent_id] = (d.grant_id, client.grant_token(d.grant_id, "payments"))
            claims = payments.verify(tokens[client.agent_id][1].token)
            assert claims.allows(FREEZE, "acct-1") and not claims.allows(PII, "acct-1")
        crm = GrantTokenVerifier(jwks, audience="crm", grants=view)
        with pytest.raises(TokenRejected, match="wrong-aud"):
            crm.verify(tokens[revoked_agent][1].token)
        publisher.publish(topics.RISK.name, anomaly(revoked_agent))
        b.release(tokens[releasing_agent][0], reason="done early")
        grants.wait_for(GrantReleased, lambda e: e.agent_id == releasing_agent)
        for agent, (grant_id, token) in tokens.items():
            wait_until(lambda a=agent, g=grant_id: view.grant_state(a, g) == "ended", 10,
                       "the grant's end reached the view")
            assert token.expires_at > datetime.now(UTC)  # still unexpired ...
            with pytest.raises(TokenRejected) as info:
                payments.verify(token.token)  # ... but refused
            assert info.value.code == "grant-ended"
        with pytest.raises(CommandRefused, match="not an active grant"):
            a.grant_token(tokens[revoked_agent][0], "payments")
