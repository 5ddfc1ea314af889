"""Agents act only for themselves: grants, operator actions and revocations of others refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from broker.adapters.kafka.bus import Publisher
from broker.config import Settings
from broker.errors import CommandRefused
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import (
    OPERATOR_REVOKE_KIND,
    AgentCommand,
    AuditRecord,
    CommandAnswered,
    RiskObserved,
)
from tests.support.factories import anomaly
from tests.support.identities import agent_client
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"


def granted(client: AgentClient) -> str:
    d = client.request_escalation([FREEZE, PII], resources=["acct-1"], duration_s=600,
                                  reason="pattern", confidence=0.95, risk_score=0.9)
    assert d.outcome == "granted" and d.grant_id
    return d.grant_id


def test_agent_a_cannot_release_renew_or_read_agent_bs_grant(
    worker: object, settings: Settings, tap: TapFactory, agents: Callable[[str], str],
) -> None:
    """A's release, renewal and token (read) of B's grant are refused, audited as A's acts."""
    a_id, b_id = agents("f"), agents("f")
    audit = tap(topics.AUDIT.name)
    service = role_access(settings, topics.SERVICE)
    with agent_client(settings, a_id) as a, agent_client(settings, b_id) as b:
        b_grant = granted(b)
        released = a.release(b_grant, reason="not mine")
        renewed = a.renew(b_grant, duration_s=60, reason="not mine", confidence=0.99,
                          risk_score=0.9)
        assert released.outcome == "denied" and renewed.outcome == "denied"
        for attempt in (lambda: a.grant_token(b_grant, "payments", owner=b_id),
                        lambda: a.grant_token(b_grant, "payments")):
            with pytest.raises(CommandRefused) as info:
                attempt()
            assert info.value.rule == "identity:not-your-grant", info.value
        refused = audit.wait_for(AuditRecord, lambda r: r.agent_id == a_id and r.outcome ==
                                 "denied" and r.subject_id != "", count=4)
        kinds = {r.kind for r in refused}
        assert {"grant.release", "grant.renewal", "identity.rejected"} <= kinds, kinds
        tokens = [r for r in refused if r.kind == "identity.rejected"]
        assert {r.inputs["signer"] for r in tokens} == {a_id}
        assert b.grant_token(b_grant, "payments").grant_id == b_grant  # B still holds it
    with GrantView(service) as view:
        assert view.wait_ready(30)
        assert view.allows(b_id, FREEZE, "acct-1").allowed


def test_operator_actions_and_revoking_others_are_refused_to_agent_credentials(
    worker: object, settings: Settings, publisher: Publisher, tap: TapFactory,
    agents: Callable[[str], str],
) -> None:
    """Signed by agent A: suspending B, rotating broker keys, an operator revoke of B and a
    behaviour anomaly about B are all refused, audited with A as the signer; B keeps its grant."""
    a_id, b_id = agents("f"), agents("f")
    audit, decisions = tap(topics.AUDIT.name), tap(topics.DECISIONS.name)
    with agent_client(settings, a_id) as a, agent_client(settings, b_id) as b:
        b_grant = granted(b)
        now = datetime.now(UTC)
        suspend = AgentCommand(command_id=f"c-{uuid.uuid4()}", action="suspend", agent_id=b_id,
                               reason="hostile", issued_at=now)
        rotate = AgentCommand(command_id=f"c-{uuid.uuid4()}", action="rotate_broker_key",
                              agent_id=a_id, issued_at=now)
        a._publisher.publish(topics.REGISTRY.name, suspend)
        a._publisher.publish(topics.REGISTRY.name, rotate)
        revoke = RiskObserved(signal_id=f"s-{uuid.uuid4()}", subject_agent_id=b_id,
                              kind=OPERATOR_REVOKE_KIND, severity=1.0, source=f"agent:{a_id}",
                              observed_at=now)
        smear = anomaly(b_id).model_copy(update={"source": f"agent:{a_id}"})
        for signal in (revoke, smear):  # keyed by B's id, signed by A
            a._publisher.publish(topics.RISK.name, signal)
        answers = decisions.wait_for(CommandAnswered, lambda x: x.command_id in
                                     {suspend.command_id, rotate.command_id}, count=2)
        assert {x.outcome for x in answers} == {"refused"}
        assert {x.rule for x in answers} == {"identity:not-permitted"}
        refused = audit.wait_for(AuditRecord, lambda r: r.kind == "identity.rejected"
                                 and r.inputs.get("signer") == a_id, count=4)
        assert {r.rules for r in refused} == {("identity:not-permitted",)}
        assert {r.subject_id for r in refused} >= {suspend.command_id, revoke.signal_id,
                                                   smear.signal_id}
        # B's own anomaly report still works afterwards: its grant was never touched before.
        assert b.grant_token(b_grant, "payments").grant_id == b_grant
