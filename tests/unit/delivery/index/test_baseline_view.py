"""Baseline entitlements at a view (pure): allowed as a baseline, withdrawn, newest revision
wins, quarantines withdraw it for their length, routing projects it per namespace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.rebuild import fold
from broker.delivery.routing import GrantRouting
from broker.sdk.resource.index import GrantIndex
from schemas.events import AgentRevoked, BaselineEntitlement, GrantIssued, WireModel

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
READ, FREEZE = "payments:transactions.read", "payments:accounts.freeze"
PII = "crm:customer.pii.read"


def record(event: WireModel | None, offset: int, *, authentic: bool = True) -> Record:
    return Record("permbroker.grants", 0, offset, 0, event, None if event else "bad", None,
                  b"a-1", authentic=authentic)


def stated(revision: int, status: str = "active", scopes: tuple[str, ...] = (READ,)
           ) -> BaselineEntitlement:
    return BaselineEntitlement(
        entitlement_id=f"b-{revision}-{status}", agent_id="a-1", status=status,
        scopes=scopes if status == "active" else (), agent_class="fraud-detection",
        registry_revision=revision, policy_revision="p", reason=f"stated at {revision}",
        cause_id=f"c-{revision}", effective_at=NOW)


def test_the_baseline_allows_its_scopes_on_any_resource_as_a_baseline_not_a_grant() -> None:
    """A statement allows its scopes with no grant and no expiry; other scopes stay denied."""
    index = GrantIndex()
    assert not index.allows("a-1", READ, "acct-1", NOW)
    index.apply(record(stated(1), 0))
    verdict = index.allows("a-1", READ, "acct-7", NOW + timedelta(days=400))
    assert verdict.allowed and verdict.grant is None and verdict.baseline is not None
    assert verdict.reason == "baseline entitlement: stated at 1"
    denied = index.allows("a-1", FREEZE, "acct-7", NOW)
    assert not denied.allowed and denied.reason.startswith("no active grant of " + FREEZE)
    assert not index.allows("a-2", READ, "acct-7", NOW).allowed


def test_a_grant_answers_first_and_a_withdrawal_says_why() -> None:
    """A grant of the scope is the verdict's answer; a withdrawn baseline denies, naming why."""
    index = GrantIndex()
    index.apply(record(stated(1), 0))
    g = GrantIssued(grant_id="g-1", agent_id="a-1", request_id="r-1", scopes=(READ,),
                    resources=("acct-1",), issued_at=NOW, expires_at=NOW + timedelta(minutes=5),
                    policy_revision="p", rules=())
    index.apply(record(g, 1))
    assert index.allows("a-1", READ, "acct-1", NOW).grant == g
    index.apply(record(stated(2, "withdrawn"), 2))
    assert index.allows("a-1", READ, "acct-1", NOW).allowed  # the grant still holds
    denied = index.allows("a-1", READ, "acct-2", NOW)
    assert not denied.allowed and "withdrawn: stated at 2" in denied.reason


def test_an_older_registry_revision_changes_nothing() -> None:
    """A re-announcement from a registry a moment behind cannot undo a suspension."""
    index = GrantIndex()
    index.apply(record(stated(3, "withdrawn"), 0))
    index.apply(record(stated(2), 1))
    assert not index.allows("a-1", READ, "", NOW).allowed
    index.apply(record(stated(4), 2))
    assert index.allows("a-1", READ, "", NOW).allowed


def test_a_forged_statement_is_never_applied() -> None:
    """Unsigned or foreign-signed (no event from the edge): nothing changes, no one is denied."""
    index = GrantIndex()
    index.apply(record(stated(1), 0))
    index.apply(record(None, 1, authentic=False))
    assert index.allows("a-1", READ, "", NOW).allowed and index.refused == 1


def test_a_quarantine_withdraws_the_baseline_until_it_ends() -> None:
    """A revocation that quarantines for 10 minutes denies the baseline then, not after."""
    index = GrantIndex()
    index.apply(record(stated(1), 0))
    index.apply(record(AgentRevoked(
        agent_id="a-1", revoked_at=NOW, reason="rate spike", rule="revoke-on-rate-spike",
        cause_event_id="sig-1", quarantined_until=NOW + timedelta(minutes=10),
        markers_until=NOW + timedelta(hours=2)), 1))
    during = index.allows("a-1", READ, "", NOW + timedelta(minutes=5))
    assert not during.allowed and "quarantined until" in during.reason
    assert "revoke-on-rate-spike" in during.reason
    assert index.allows("a-1", READ, "", NOW + timedelta(minutes=11)).allowed


def test_routing_sends_the_baseline_to_every_namespace_topic_projected() -> None:
    """The default topic gets it whole; each routed namespace its own scopes (maybe none)."""
    routed = GrantRouting(frozenset({"payments", "crm", "reports"})).route(
        stated(1, scopes=(READ, PII)))
    scopes = {topic: e.scopes for topic, e in routed}  # type: ignore[attr-defined]
    assert scopes == {"permbroker.grants": (READ, PII), "permbroker.grants.payments": (READ,),
                      "permbroker.grants.crm": (PII,), "permbroker.grants.reports": ()}


def test_a_rebuild_folds_grants_only_and_leaves_the_baseline_to_the_log() -> None:
    """Baseline statements put nothing in the rebuilt grant store (they have no Redis key to
    expire) and end no grant; the folded grants are those of the same log without them."""
    g = GrantIssued(grant_id="g-1", agent_id="a-1", request_id="r-1", scopes=(FREEZE,),
                    resources=("acct-1",), issued_at=NOW, expires_at=NOW + timedelta(minutes=5),
                    policy_revision="p", rules=())
    with_statements = fold([record(stated(1), 0), record(g, 1),
                            record(stated(2, "withdrawn"), 2)], NOW)
    without = fold([record(g, 0)], NOW)
    assert with_statements.active == without.active == {"g-1": g}
    assert with_statements.revocations == {} and with_statements.records == 3
