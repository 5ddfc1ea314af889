"""A request whose client gave up is never granted: decided after its valid_until, it is denied."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.errors import DecisionTimeout
from broker.grants.decide import REQUEST_EXPIRED, derive_id
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AuditRecord, EscalationDecided, GrantIssued
from tests.support.identities import agent_client
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE = "payments:accounts.freeze"


def test_a_request_whose_client_gave_up_is_denied_request_expired(
    worker: WorkerProcess, settings: Settings, tap: TapFactory, rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """No worker while the client waits 2 s; it gives up; the worker starts and reads the
    request: denied (rule request-expired), audited, no grant event and no grant key."""
    agent = agents("f")  # registered while the worker runs
    decisions, grants, audit = (tap(topics.DECISIONS.name), tap(topics.GRANTS.name),
                                tap(topics.AUDIT.name))
    worker.stop()
    try:
        with agent_client(settings, agent) as client, pytest.raises(DecisionTimeout):
            client.request_escalation([FREEZE], resources=["acct-1"], duration_s=600,
                                      reason="pattern", confidence=0.95, risk_score=0.9,
                                      timeout=2.0)
    finally:
        worker.start()
    worker.wait_ready()
    decision = decisions.wait_for(EscalationDecided, lambda d: d.agent_id == agent, timeout=90)[0]
    assert decision.outcome == "denied" and decision.grant_id is None
    assert [d.rule for d in decision.denied] == [REQUEST_EXPIRED]
    assert decision.matched_rules == (REQUEST_EXPIRED,)
    record = audit.wait_for(AuditRecord, lambda a: a.kind == "escalation.decided"
                            and a.subject_id == decision.request_id)[0]
    assert record.outcome == "denied" and record.rules == (REQUEST_EXPIRED,)
    request = record.inputs["request"]
    assert isinstance(request, dict) and request["valid_until"] is not None
    grant_id = derive_id("grant", decision.request_id, agent)
    assert not rclient.exists(keys.grant(agent, grant_id))
    assert not rclient.zcard(keys.index(agent))
    assert not grants.events(GrantIssued, lambda g: g.agent_id == agent)
