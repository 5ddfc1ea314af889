"""Consistency tokens and per-namespace grant routing (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.delivery.consistency import ConsistencyToken, Position, merge, parse_token, token_of
from broker.delivery.routing import GrantRouting
from broker.errors import InvalidConsistencyToken
from schemas.events import AgentRevoked, GrantExpired, GrantIssued, GrantRenewed, GrantRevoked

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=20)
FREEZE, PII, EXPORT = "payments:accounts.freeze", "crm:customer.pii.read", "reports:ledger.export"
ROUTED = GrantRouting(frozenset({"payments", "crm"}))


def grant(*scopes: str) -> GrantIssued:
    return GrantIssued(grant_id="g-1", agent_id="a-1", request_id="r-1", scopes=scopes,
                       resources=("acct-1",), issued_at=NOW, expires_at=LATER,
                       policy_revision="sha256:ab", rules=("x",))


def test_token_round_trips_and_keeps_the_latest_offset_per_partition() -> None:
    """encode/parse is lossless; a token keeps only the latest offset per topic partition."""
    token = token_of([Position("permbroker.grants", 3, 10), Position("permbroker.grants", 3, 12),
                      Position("permbroker.grants.payments", 3, 4)])
    assert token.encode() == "ct1:permbroker.grants@3:12,permbroker.grants.payments@3:4"
    assert parse_token(token.encode()) == token
    assert token.on("permbroker.grants.payments") == Position("permbroker.grants.payments", 3, 4)
    assert token.on("permbroker.grants.crm") is None


def test_merge_is_at_least_as_fresh_as_every_token() -> None:
    """Merging tokens keeps the highest offset of each partition."""
    a = parse_token("ct1:permbroker.grants@1:5")
    b = parse_token("ct1:permbroker.grants@1:9,permbroker.grants.crm@1:2")
    assert merge(a, None, b) == ConsistencyToken((Position("permbroker.grants", 1, 9),
                                                  Position("permbroker.grants.crm", 1, 2)))
    assert merge(None) is None


@pytest.mark.parametrize("text", ["", "ct2:permbroker.grants@1:5", "ct1:", "ct1:grants@x:5",
                                  "ct1:permbroker.grants@1:-3", "permbroker.grants@1:5"])
def test_malformed_tokens_are_refused_with_a_reason(text: str) -> None:
    """A token that does not parse is an error naming what is wrong (the view then denies)."""
    with pytest.raises(InvalidConsistencyToken):
        parse_token(text)


def test_a_crm_scope_never_reaches_the_payments_topic() -> None:
    """A grant is projected per namespace: each routed topic sees only its own scopes."""
    routes = dict(ROUTED.route(grant(FREEZE, PII, EXPORT)))
    assert set(routes) == {"permbroker.grants", "permbroker.grants.payments",
                           "permbroker.grants.crm"}
    assert routes["permbroker.grants"].scopes == (FREEZE, PII, EXPORT)  # type: ignore[attr-defined]
    assert routes["permbroker.grants.payments"].scopes == (FREEZE,)  # type: ignore[attr-defined]
    assert routes["permbroker.grants.crm"].scopes == (PII,)  # type: ignore[attr-defined]
    crm_only = dict(ROUTED.route(grant(PII)))
    assert "permbroker.grants.payments" not in crm_only


def test_renewals_are_projected_like_grants() -> None:
    """A renewal reaches only the topics of the grant's namespaces, projected the same way."""
    renewed = GrantRenewed(grant_id="g-1", agent_id="a-1", request_id="r-2", scopes=(PII,),
                           resources=(), renewed_at=NOW, previous_expires_at=LATER,
                           expires_at=LATER + timedelta(seconds=5), policy_revision="p", rules=())
    assert [t for t, _ in ROUTED.route(renewed)] == ["permbroker.grants", "permbroker.grants.crm"]


def test_agent_revocation_reaches_every_topic_and_ends_follow_their_grant() -> None:
    """Agent-level revocations go everywhere; a grant's end goes where the grant went."""
    revoked = AgentRevoked(agent_id="a-1", revoked_at=NOW, reason="r", rule="x",
                           cause_event_id="sig-1", markers_until=LATER)
    assert len(ROUTED.route(revoked)) == 3
    end = GrantRevoked(grant_id="g-1", agent_id="a-1", revoked_at=NOW, expires_at=LATER,
                       reason="r", rule="x", cause_event_id="sig-1")
    assert [t for t, _ in ROUTED.route(end, {"crm"})] == ["permbroker.grants",
                                                           "permbroker.grants.crm"]
    unknown = GrantExpired(grant_id="g-1", agent_id="a-1", expires_at=LATER)
    assert len(ROUTED.route(unknown, None)) == 3  # namespaces unknown: never lose an end


def test_without_routing_everything_goes_to_the_default_topic() -> None:
    """No routed namespace: one default topic."""
    assert GrantRouting().topics() == ("permbroker.grants",)
    assert [t for t, _ in GrantRouting().route(grant(FREEZE, PII))] == ["permbroker.grants"]
