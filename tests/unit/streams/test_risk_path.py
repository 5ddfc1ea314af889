"""The risk path (streams/risk.py) on the ports' in-memory twins: a revoking signal ends the
agent's grants on the grant topics first, then writes the audit of every end and of the signal
itself in one write; its time is observed stage by stage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker.adapters.kafka import codec
from broker.policy import load_policy
from schemas import topics
from schemas.events import AuditRecord, EscalationRequested, GrantRevoked, RiskObserved, WireModel
from streams.escalations import Escalations
from streams.guard import guarded
from streams.risk import Risk
from streams.worker import Incoming, OpenGate, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

FRAUD = load_policy(Path(__file__).resolve().parents[3] / "policies" / "fraud")
AGENT = "fraud-detector-7"


def _message(topic: str, event: WireModel, offset: int, at: datetime) -> Incoming:
    encoded = codec.encode(event, source="/tests/risk")
    return Incoming(topic, 0, offset, at.timestamp(), encoded.key, encoded.value,
                    encoded.headers)


async def test_a_revocation_is_announced_then_audited_in_one_write_stage_by_stage() -> None:
    """Two grants revoked by one anomaly: the grant topics are written before the audit, and
    the audit is one write holding each grant's end and the signal's own record; the signal's
    stages are observed in the path's order."""
    now = datetime.now(UTC)
    bus = MemoryBus()
    ctx = WorkerContext(FRAUD, MemoryGrantStore(clock=lambda: now, margin_s=600,
                                                view_built_at=now), bus, margin_s=600)
    ctx.ready.set()
    gate = OpenGate(FRAUD)
    escalations, risk = Escalations(ctx, gate), Risk(ctx, gate)
    for n in (1, 2):
        request = EscalationRequested(
            request_id=f"req-{n}", agent_id=AGENT, scopes=("payments:accounts.freeze",),
            resources=(f"acct-{n}",), duration_s=900, reason="card-testing pattern",
            confidence=0.95, risk_score=0.85, requested_at=now)
        await escalations.on_escalation(_message(topics.ESCALATIONS.name, request, n, now))
    writes: list[str] = []

    async def note(topic: str) -> None:
        writes.append(topic)

    bus.before_write = note
    stages: list[str] = []
    observe = ctx.figures.stages.labels

    def labels(topic: str, stage: str) -> object:
        stages.append(stage)
        return observe(topic, stage)

    ctx.figures.stages.labels = labels  # type: ignore[method-assign]
    signal = RiskObserved(signal_id="sig-1", subject_agent_id=AGENT, kind="behaviour_anomaly",
                          severity=0.95, source="tests", observed_at=now)
    await guarded(ctx, _message(topics.RISK.name, signal, 1, now - timedelta(seconds=1)),
                  risk.on_risk)
    audit_writes = [i for i, t in enumerate(writes) if t == topics.AUDIT_RAW.name]
    assert len(audit_writes) == 1 and writes.index(topics.GRANTS.name) < audit_writes[0]
    revoked = [e for e in bus.events(topics.GRANTS.name) if isinstance(e, GrantRevoked)]
    assert len(revoked) == 2
    audits = [e for e in bus.events(topics.AUDIT_RAW.name) if isinstance(e, AuditRecord)]
    last = audits[-3:]  # the one write: each grant's end, then the signal's record
    assert [a.kind for a in last[:2]] == ["grant.revoked", "grant.revoked"]
    assert {a.subject_id for a in last[:2]} == {e.grant_id for e in revoked}
    assert last[2].subject_id == "sig-1" and sorted(last[2].inputs["revoked_grants"]) == \
        sorted(e.grant_id for e in revoked)
    assert stages == ["queued", "verified", "revoked", "published", "audited", "finished"]
