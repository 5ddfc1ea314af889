"""Resource services on a real Kafka and Redis: views, tokens, acks, routing, renewal, expiry."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from broker.adapters.crypto.service_key import ensure_service
from broker.cli.main import app as cli
from broker.cli.ops.enforcement import collect_status
from broker.config import Settings
from broker.sdk.operator.client import revoke
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import (
    AgentRevoked,
    GrantExpired,
    GrantExpiring,
    GrantIssued,
    GrantRenewed,
    GrantRevoked,
)
from tests.support.enforcement import EXPORT, FREEZE, PII, fraud_grant, kafka_frozen
from tests.support.identities import agent_client, service_topic, shared_trust
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
PAYMENTS = topics.GRANTS_PAYMENTS.name


def test_revocation_reaches_a_running_view_and_its_ack_is_reported(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], run_id: str,
) -> None:
    """allows() turns false at the view; its ack shows in `revocations status` with a time."""
    service = role_access(settings, topics.SERVICE)
    operator = role_access(settings, topics.OPERATOR)
    agent, point = agents("f"), f"payments-{run_id}-ack"
    since = datetime.now(UTC) - timedelta(seconds=5)
    with GrantView(service, trust=shared_trust(settings), topic=PAYMENTS,
                   enforcement_point=ensure_service(settings, point)) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        granted = fraud_grant(client)
        assert view.allows(agent, FREEZE, "acct-1", at_least=granted.consistency_token).allowed
        rev = revoke(settings, operator, agent, "suspected prompt injection", operator="tests",
                     trust=shared_trust(settings))
        assert rev.grant_ids == (granted.grant_id,) and rev.consistency_token
        after = view.allows(agent, FREEZE, "acct-1", at_least=rev.consistency_token)
        assert not after.allowed and not after.unavailable, after.reason

        def confirmation() -> float | None:
            for p in collect_status(operator, since, shared_trust(settings)).points:
                for c in p.confirmed:
                    if p.name == point and c.cause_event_id == rev.signal_id:
                        return c.seconds
            return None

        wait_until(lambda: confirmation() is not None, 15, "the view's ack")
    seconds = confirmation()
    assert seconds is not None and 0 < seconds < 10
    result = CliRunner().invoke(cli, ["revocations", "status", "--since", "5m", "--json"],
                                env=operator.env())
    assert result.exit_code == 0, result.output
    shown = {p["name"]: p for p in json.loads(result.output)["enforcement_points"]}
    confirmed = {c["cause_event_id"]: c for c in shown[point]["confirmed"]}
    assert confirmed[rev.signal_id]["propagation_ms"] == pytest.approx(seconds * 1000, abs=0.2)
    assert rev.signal_id not in {u["cause_event_id"] for u in shown[point]["unconfirmed"]}


def test_stopped_view_never_answers_allowed_with_the_revocations_token(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """Paused while the revocation happens: with its token it waits then denies, never allows."""
    service, agent = role_access(settings, topics.SERVICE), agents("f")
    with GrantView(service, trust=shared_trust(settings), topic=PAYMENTS,
                   token_wait_s=1.0) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        granted = fraud_grant(client)
        assert view.allows(agent, FREEZE, "acct-1", at_least=granted.consistency_token).allowed
        view.pause()
        rev = revoke(settings, role_access(settings, topics.OPERATOR), agent, "new-enemy check",
                     operator="tests", trust=shared_trust(settings))
        assert rev.consistency_token is not None
        behind = view.allows(agent, FREEZE, "acct-1", at_least=rev.consistency_token)
        assert not behind.allowed and behind.unavailable
        assert "consistency token needs" in behind.reason and "waited 1s" in behind.reason
        view.resume()
        wait_until(lambda: view.freshness().fresh, 10, "the view to be proven current again")
        caught_up = view.allows(agent, FREEZE, "acct-1", at_least=rev.consistency_token)
        assert not caught_up.allowed and not caught_up.unavailable, caught_up.reason
        assert "no active grant" in caught_up.reason


def test_view_that_cannot_reach_kafka_denies_with_a_reason_and_recovers(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """Kafka frozen past the staleness bound: elevated scopes denied, saying why; then back."""
    service, agent = role_access(settings, topics.SERVICE), agents("f")
    with GrantView(service, trust=shared_trust(settings), topic=PAYMENTS, staleness_bound_s=1.5,
                   probe_interval_s=0.2) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        granted = fraud_grant(client)
        assert view.allows(agent, FREEZE, "acct-1", at_least=granted.consistency_token).allowed
        with kafka_frozen(settings.kafka_bootstrap):
            wait_until(lambda: not view.allows(agent, FREEZE, "acct-1").allowed, 15,
                       "the view to deny once stale")
            denied = view.allows(agent, FREEZE, "acct-1")
            assert denied.unavailable and "1.5s staleness bound" in denied.reason, denied.reason
            assert not view.freshness().fresh
        wait_until(lambda: view.allows(agent, FREEZE, "acct-1").allowed, 15,
                   "the view to recover once Kafka answers")
        assert view.freshness().fresh


def _agent_records(tap: Tap, agent: str) -> list[tuple[int, int, object]]:
    return [(r.partition, r.offset, r.event) for r in list(tap.records)
            if r.key == agent.encode() and r.event is not None]


def test_routing_keeps_crm_off_the_payments_topic_and_each_topic_in_agent_order(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """crm scopes never reach the payments topic; issue < renew < revoke in every topic (the
    log of record, and the namespace topics a service of the agent's tenant reads)."""
    agent = agents("f")
    payments_topic, crm_topic = (service_topic(settings, t)
                                 for t in (PAYMENTS, topics.GRANTS_CRM.name))
    taps = {t: tap(t) for t in (topics.GRANTS.name, payments_topic, crm_topic)}
    with agent_client(settings, agent) as client:
        both = fraud_grant(client)
        crm_only = fraud_grant(client, (PII,))
        renewed = client.renew(both.grant_id, duration_s=20, reason="still on it",
                               confidence=0.95, risk_score=0.93)
        assert renewed.outcome == "renewed", renewed.reasons
    revoke(settings, role_access(settings, topics.OPERATOR), agent, "routing check",
           operator="tests", trust=shared_trust(settings))
    for t in taps.values():
        t.wait_for(AgentRevoked, lambda e: e.agent_id == agent)
    payments = _agent_records(taps[payments_topic], agent)
    assert all(not any(s.startswith("crm:") for s in getattr(e, "scopes", ()))
               for _, _, e in payments)
    assert crm_only.grant_id not in {getattr(e, "grant_id", None) for _, _, e in payments}
    crm = _agent_records(taps[crm_topic], agent)
    assert all(s.startswith("crm:") for _, _, e in crm for s in getattr(e, "scopes", ()))
    for name, t in taps.items():
        records = _agent_records(t, agent)
        assert len({p for p, _, _ in records}) == 1, f"{name}: one agent, one partition"
        kinds = [type(e) for _, _, e in records if getattr(e, "grant_id", both.grant_id)
                 == both.grant_id]
        assert kinds == [GrantIssued, GrantRenewed, GrantRevoked, AgentRevoked], (name, kinds)
        offsets = [o for _, o, _ in records]
        assert offsets == sorted(offsets), f"{name}: per-agent order"


def test_renewal_release_and_the_cumulative_maximum(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
) -> None:
    """Renewal states the new expiry (the view follows); past the maximum it names the rule."""
    agent, reporter, other = agents("f"), agents("r"), agents("f")
    service = role_access(settings, topics.SERVICE)
    with GrantView(service, trust=shared_trust(settings), topic=PAYMENTS) as view, \
            agent_client(settings, agent) as client, \
            agent_client(settings, reporter) as rclient, agent_client(settings, other) as oclient:
        assert view.wait_ready(30)
        granted = fraud_grant(client)
        renewed = client.renew(granted.grant_id, duration_s=20, reason="more time",
                               confidence=0.95, risk_score=0.93)
        assert renewed.outcome == "renewed" and renewed.expires_at and granted.expires_at
        assert renewed.expires_at > granted.expires_at and renewed.max_total_duration_s == 60
        assert view.allows(agent, FREEZE, "acct-1", at_least=renewed.consistency_token).allowed
        assert [g.expires_at for g in view.active(agent)] == [renewed.expires_at]
        export = rclient.request_escalation([EXPORT], duration_s=8, reason="month end",
                                            confidence=0.97)
        assert export.grant_id is not None
        refused = rclient.renew(export.grant_id, duration_s=8, reason="not done",
                                confidence=0.97)
        assert refused.outcome == "denied" and refused.rule == "report-ledger-export"
        assert "cumulative maximum" in refused.reasons[0]
        assert refused.expires_at == export.expires_at
        stolen = oclient.release(granted.grant_id, reason="not mine")
        assert stolen.outcome == "denied" and "not an active grant of" in stolen.reasons[0]
        released = client.release(granted.grant_id, reason="case closed")
        assert released.outcome == "released" and released.consistency_token
        after = view.allows(agent, FREEZE, "acct-1", at_least=released.consistency_token)
        assert not after.allowed and not after.unavailable


def test_expiring_arrives_before_expired(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """A 3 s grant: grant.expiring precedes grant.expired on the default and routed topics."""
    reporter = agents("r")
    taps = [tap(topics.GRANTS.name), tap(service_topic(settings, topics.GRANTS_REPORTS.name))]
    with agent_client(settings, reporter) as client:
        d = client.request_escalation([EXPORT], duration_s=3, reason="quick export",
                                      confidence=0.97)
    assert d.grant_id is not None and d.expires_at is not None
    for t in taps:
        t.wait_for(GrantExpired, lambda e: e.grant_id == d.grant_id, timeout=20)
        records = [(r.offset, r.event) for r in list(t.records)
                   if getattr(r.event, "grant_id", None) == d.grant_id]
        kinds = [type(e) for _, e in records]
        assert kinds == [GrantIssued, GrantExpiring, GrantExpired], kinds
        warning = records[1][1]
        assert isinstance(warning, GrantExpiring) and warning.expires_at == d.expires_at
        assert warning.warned_at < d.expires_at
