"""Folding the grant topic (broker/adapters/kafka/rebuild.py): revocation markers survive, and
the live risk the raw audit noted comes back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.rebuild import fold
from broker.grants.revocation import risk_audit
from broker.policy import RiskAction
from broker.sdk.resource.index import GrantIndex
from schemas.events import AgentRevoked, GrantIssued, RiskObserved, WireModel

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _records(*events: WireModel) -> list[Record]:
    return [Record("permbroker.grants", 0, n, 0, e, None, None) for n, e in enumerate(events)]


def _revoked(at: datetime, rule: str, quarantine_s: int | None) -> AgentRevoked:
    until = at + timedelta(seconds=quarantine_s) if quarantine_s else None
    return AgentRevoked(agent_id="a-1", revoked_at=at, reason="r", rule=rule,
                        cause_event_id=f"sig-{rule}", quarantined_until=until,
                        markers_until=(until or at) + timedelta(hours=2))


def test_a_later_revocation_without_quarantine_keeps_the_earlier_quarantine() -> None:
    """Anomaly (10 min quarantine), then a model change: the rebuilt markers keep the 10 min."""
    anomaly = _revoked(NOW, "revoke-on-behaviour-anomaly", 600)
    model_change = _revoked(NOW + timedelta(seconds=5), "revoke-on-model-change", None)
    for order in ((anomaly, model_change), (model_change, anomaly)):
        merged = fold(_records(*order), NOW).revocations["a-1"]
        assert merged.quarantined_until == NOW + timedelta(seconds=600)
        assert merged.rule == "revoke-on-behaviour-anomaly"
        assert merged.revoked_at == NOW + timedelta(seconds=5)
        assert merged.markers_until == anomaly.markers_until


def test_the_longest_quarantine_wins() -> None:
    """Two quarantines: the one that ends last is restored, with its rule."""
    short = _revoked(NOW + timedelta(seconds=10), "short", 60)
    long = _revoked(NOW, "long", 3600)
    merged = fold(_records(long, short), NOW).revocations["a-1"]
    assert merged.quarantined_until == NOW + timedelta(seconds=3600)
    assert merged.rule == "long"


def _grant(gid: str, issued: datetime) -> GrantIssued:
    return GrantIssued(grant_id=gid, agent_id="a-1", request_id=f"req-{gid}",
                       scopes=("payments:accounts.freeze",), resources=("acct-1",),
                       issued_at=issued, expires_at=issued + timedelta(seconds=20),
                       policy_revision="sha256:00", rules=("r",))


def test_a_repeated_revocation_ends_only_grants_issued_before_it() -> None:
    """Log: grant g1, revocation, grant g2 (issued later), the revocation again (a redelivery):
    g1 ends, g2 stays, in the rebuild fold and in a resource view's index alike."""
    g1, g2 = _grant("g1", NOW - timedelta(seconds=5)), _grant("g2", NOW + timedelta(seconds=2))
    rev = _revoked(NOW, "revoke-on-model-change", None).model_copy(update={"grant_ids": ("g1",)})
    log = _records(g1, rev, g2, rev)
    assert set(fold(log, NOW).active) == {"g2"}
    index = GrantIndex()
    for record in log:
        index.apply(record)
    assert index.state("a-1", "g1", NOW) == "ended"
    assert index.state("a-1", "g2", NOW + timedelta(seconds=3)) == "active"


def test_a_wiped_store_s_unlisted_earlier_grant_still_ends() -> None:
    """A revocation that could not list a grant (store wiped) still ends it if issued before."""
    g1 = _grant("g1", NOW - timedelta(seconds=5))
    log = _records(g1, _revoked(NOW, "revoke-on-model-change", None))
    assert fold(log, NOW).active == {}


def _noted(agent: str, severity: float, until: datetime | None, outcome: str = "noted") -> Record:
    signal = RiskObserved(signal_id=f"sig-{agent}-{severity}", subject_agent_id=agent,
                          kind="behaviour_anomaly", severity=severity, source="t",
                          observed_at=NOW - timedelta(minutes=1))
    action = RiskAction(revoke=outcome == "revoked", rule="r", reason="r")
    record = risk_audit(signal, action, (), NOW - timedelta(minutes=1), noted_until=until)
    return Record("permbroker.audit.raw", 0, 0, 0, record, None, None)


def test_live_risk_noted_in_the_audit_comes_back_with_the_view() -> None:
    """Risk a signal noted (not revoked) and still in force is folded back, in log order; risk
    that has lapsed, a revocation's record and one without its end are not."""
    audit = [_noted("a-1", 0.75, NOW + timedelta(minutes=9)),
             _noted("a-2", 0.5, NOW - timedelta(seconds=1)),
             _noted("a-3", 0.95, NOW + timedelta(minutes=9), outcome="revoked"),
             _noted("a-4", 0.8, None),
             _noted("a-1", 0.3, NOW + timedelta(minutes=9, seconds=30))]
    assert fold([], NOW, audit).risk == [("a-1", 0.75, NOW + timedelta(minutes=9)),
                                        ("a-1", 0.3, NOW + timedelta(minutes=9, seconds=30))]
