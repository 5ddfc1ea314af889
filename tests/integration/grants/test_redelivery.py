"""True redelivery: the worker consumes the very same records again, at the same offsets.

After the worker handled an escalation, a revoking risk signal, a renewal and the vote that
approved a held request, it is stopped (its consumer group leaves, empty) and the group's
committed offsets are set back to those four records, as after a crash before the offset commit.
Restarted, the worker reads each record again at its own offset (the group's commits pass them
again; the escalation's duplicate is audited with the record's own origin). Kafka's output and
Redis's state must show one decision, one grant, an unchanged expiry and one effect each:
republished lifecycle events (at-least-once) are identical copies, never new ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis
from confluent_kafka import Consumer, TopicPartition

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.bus import Publisher, Record, consumer
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.sdk.operator.approvals import Approver
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import (
    AgentRevoked,
    ApprovalVoted,
    AuditRecord,
    EscalationDecided,
    EscalationPending,
    GrantIssued,
    GrantRenewed,
    GrantRevoked,
    RenewalDecided,
    RenewalRequested,
    WireModel,
)
from tests.support.approval_policy import requester, verifier
from tests.support.factories import anomaly, fraud_request
from tests.support.identities import Registrar
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]
WAIT = 90.0


@dataclass(frozen=True)
class Subjects:
    """The four agents and the input record of each that is delivered again."""

    escalation: tuple[str, Record]
    risk: tuple[str, Record]
    renewal: tuple[str, Record]
    vote: tuple[str, Record]

    def records(self) -> list[Record]:
        return [self.escalation[1], self.risk[1], self.renewal[1], self.vote[1]]


def _record(tap: Tap, pred: Callable[[WireModel], bool]) -> Record:
    """The one record of a tapped input topic whose event matches ``pred``."""
    tap.wait_for(WireModel, pred, timeout=WAIT)
    (found,) = [r for r in tap.records if r.event is not None and pred(r.event)]
    return found


def _handled_once(settings: Settings, publisher: Publisher, tap: TapFactory,
                  agents: Callable[[str], str], registrar: Registrar,
                  run_id: str) -> Subjects:
    """Publish the four inputs and wait until the worker handled each of them."""
    inputs = {t: tap(t) for t in (topics.ESCALATIONS.name, topics.RISK.name,
                                  topics.APPROVALS.name)}
    decisions, grants = tap(topics.DECISIONS.name), tap(topics.GRANTS.name)
    esc_agent, risk_agent, ren_agent = agents("b"), agents("b"), agents("b")
    requests = {a: fraud_request(a) for a in (esc_agent, risk_agent, ren_agent)}
    publisher.publish_many(topics.ESCALATIONS.name, list(requests.values()))
    issued = {g.agent_id: g for g in grants.wait_for(
        GrantIssued, lambda g: g.agent_id in requests, count=3, timeout=WAIT)}
    signal = anomaly(risk_agent)
    publisher.publish(topics.RISK.name, signal)
    renewal = RenewalRequested(request_id=f"ren-{signal.signal_id}", agent_id=ren_agent,
                               grant_id=issued[ren_agent].grant_id, duration_s=900,
                               reason="still on it", confidence=0.95, risk_score=0.93,
                               requested_at=issued[ren_agent].issued_at)
    publisher.publish(topics.ESCALATIONS.name, renewal)
    vote_agent, deciding = _approved(settings, publisher, decisions, registrar, run_id)
    grants.wait_for(AgentRevoked, lambda e: e.agent_id == risk_agent, timeout=WAIT)
    decisions.wait_for(RenewalDecided, lambda d: d.request_id == renewal.request_id
                       and d.outcome == "renewed", timeout=WAIT)
    return Subjects(
        (esc_agent, _record(inputs[topics.ESCALATIONS.name], lambda e: getattr(
            e, "request_id", "") == requests[esc_agent].request_id)),
        (risk_agent, _record(inputs[topics.RISK.name], lambda e: getattr(
            e, "signal_id", "") == signal.signal_id)),
        (ren_agent, _record(inputs[topics.ESCALATIONS.name], lambda e: getattr(
            e, "request_id", "") == renewal.request_id)),
        (vote_agent, _record(inputs[topics.APPROVALS.name], lambda e: isinstance(
            e, ApprovalVoted) and e.vote_id == deciding.vote_id)))


def _approved(settings: Settings, publisher: Publisher, decisions: Tap, registrar: Registrar,
              run_id: str) -> tuple[str, ApprovalVoted]:
    """A request held for two approvals, approved by two verifiers; (agent, deciding vote)."""
    agent = registrar.ensure(requester(run_id, "a", 9))
    approvers = [registrar.ensure(verifier(run_id, n)) for n in range(2)]
    request = fraud_request(agent, scopes=("payments:accounts.freeze",), duration_s=600)
    publisher.publish(topics.ESCALATIONS.name, request)
    decisions.wait_for(EscalationPending, lambda d: d.request_id == request.request_id,
                       timeout=WAIT)
    store = AgentKeyStore.from_settings(settings)
    votes = []
    for approver in approvers:
        voter = Approver.agent(approver, role_access(settings, topics.AGENT), keys=store)
        votes.append(voter.approve(request.request_id, agent, "checked"))
    decisions.wait_for(EscalationDecided, lambda d: d.request_id == request.request_id
                       and d.outcome == "granted", timeout=WAIT)
    return agent, votes[-1]


def _worker_group(settings: Settings) -> Consumer:
    """A client of the workers' consumer group (as the admin, the tooling's user), never
    committing on its own."""
    return consumer(role_access(settings, topics.ADMIN), group=settings.app_id,
                    **{"enable.auto.commit": False})


def _rewind(settings: Settings, records: list[Record]) -> dict[tuple[str, int], int]:
    """Set the (empty) worker group's commits back to the records; {(topic, partition): offset}."""
    to: dict[tuple[str, int], int] = {}
    for r in records:
        to[(r.topic, r.partition)] = min(r.offset, to.get((r.topic, r.partition), r.offset))
    group = _worker_group(settings)
    try:
        group.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in to.items()],
                     asynchronous=False)
        committed = group.committed([TopicPartition(t, p) for t, p in to], timeout=10)
        assert {(c.topic, c.partition): c.offset for c in committed} == to
    finally:
        group.close()
    return to


def _committed_past(settings: Settings, records: list[Record]) -> bool:
    """Whether the worker group's commits passed every record again (each handled and acked)."""
    group = _worker_group(settings)
    try:
        tps = [TopicPartition(r.topic, r.partition) for r in records]
        at = {(c.topic, c.partition): c.offset for c in group.committed(tps, timeout=10)}
    finally:
        group.close()
    return all(at[(r.topic, r.partition)] > r.offset for r in records)


def _redis_state(client: redis.Redis, agents: list[str]) -> dict[str, object]:
    """Every key of the agents with its PXAT, and the revocation markers' values."""
    out: dict[str, object] = {}
    for agent in agents:
        for key in client.scan_iter(match=f"{keys.agent_prefix(agent)}*", count=1000):
            name = key.decode()
            if ":grant:" in name or name.endswith((":quarantine", ":revoked", ":grants")):
                out[name] = client.pexpiretime(key)
        out[f"{agent} revoked marker"] = client.get(keys.revoked(agent))
    return out


def _outputs(decisions: Tap, grants: Tap, s: Subjects) -> dict[str, list[str]]:
    """The distinct contents of every output about the subjects, and how many copies of each."""
    agents = {s.escalation[0], s.risk[0], s.renewal[0], s.vote[0]}
    out: dict[str, list[str]] = {}
    for r in [*decisions.records, *grants.records]:
        event = r.event
        if event is None or getattr(event, "agent_id", None) not in agents:
            continue
        body = event.model_dump_json(exclude={"consistency_token"})
        out.setdefault(f"{r.topic} {type(event).__name__}", []).append(body)
    return out


def test_the_same_records_consumed_again_at_the_same_offsets_have_one_effect(
    worker: WorkerProcess, settings: Settings, publisher: Publisher, tap: TapFactory,
    rclient: redis.Redis, agents: Callable[[str], str], registrar: Registrar, run_id: str,
) -> None:
    """Escalation, revoking signal, renewal, approving vote: each consumed twice at its offset;
    one decision, one grant, expiries and markers unchanged, lifecycle copies identical."""
    decisions, grants = tap(topics.DECISIONS.name), tap(topics.GRANTS.name)
    audit = tap(topics.AUDIT_RAW.name)
    s = _handled_once(settings, publisher, tap, agents, registrar, run_id)
    who = [s.escalation[0], s.risk[0], s.renewal[0], s.vote[0]]
    wait_until(lambda: _committed_past(settings, s.records()), WAIT, "first handling committed")
    worker.stop()
    state, outputs = _redis_state(rclient, who), _outputs(decisions, grants, s)
    try:
        _rewind(settings, s.records())
    finally:
        worker.start()
        worker.wait_ready()
    wait_until(lambda: _committed_past(settings, s.records()), WAIT,
               "every record consumed and acknowledged again")
    esc = s.escalation[1]
    origin = f"{esc.topic}/{esc.partition}/{esc.offset}"
    audit.wait_for(AuditRecord, lambda a: a.kind == "escalation.duplicate"
                   and a.inputs.get("origin") == origin, timeout=WAIT)
    vote = s.vote[1].event
    assert isinstance(vote, ApprovalVoted)
    audit.wait_for(AuditRecord, lambda a: a.kind == "approval.voted" and a.outcome == "closed"
                   and a.inputs["vote"]["vote_id"] == vote.vote_id, timeout=WAIT)
    _check_one_effect(outputs, _outputs(decisions, grants, s), grants, s)
    assert _redis_state(rclient, who) == state, "a redelivery changed Redis"


def _check_one_effect(before: dict[str, list[str]], after: dict[str, list[str]], grants: Tap,
                      s: Subjects) -> None:
    """Decisions and grants once; lifecycle events only as identical copies."""
    once = (f"{topics.DECISIONS.name} EscalationDecided", f"{topics.DECISIONS.name} "
            "EscalationPending", f"{topics.GRANTS.name} GrantIssued")
    for kind in once:
        assert after[kind] == before[kind], f"{kind}: a redelivery published another"
        assert len(after[kind]) == len(set(after[kind])), f"{kind}: two of one"
    # The escalation, the approved request, and the requests of the revoked and renewed grants.
    assert len(before[f"{topics.DECISIONS.name} EscalationDecided"]) == 4
    assert len(before[f"{topics.GRANTS.name} GrantIssued"]) == 4
    for kind in (f"{topics.GRANTS.name} AgentRevoked", f"{topics.GRANTS.name} GrantRevoked",
                 f"{topics.GRANTS.name} GrantRenewed", f"{topics.DECISIONS.name} RenewalDecided"):
        assert set(after[kind]) == set(before[kind]) and len(set(after[kind])) == 1, kind
    (renewed,) = {e.expires_at for e in grants.events(GrantRenewed)
                  if e.agent_id == s.renewal[0]}
    (revoked,) = {e.grant_id for e in grants.events(GrantRevoked) if e.agent_id == s.risk[0]}
    assert renewed > min(g.expires_at for g in grants.events(GrantIssued)
                         if g.agent_id == s.renewal[0])
    assert revoked
