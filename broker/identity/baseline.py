"""Baseline entitlements (pure): an agent's registry record and its class's baseline -> the
standing entitlement the broker states. Imports schemas and broker.grants; time is an argument.

An agent whose record is ``active`` holds its class's baseline scopes on every resource, with no
expiry, until the broker states otherwise; a suspended, quarantined or decommissioned agent holds
none. The statement is a pure function of the record and the policy, so it is deterministic: a
redelivered command or a worker restart states the same entitlement under the same id, and a
view applies the newest registry revision it has read (an older statement changes nothing).
"""

from __future__ import annotations

from datetime import datetime

from broker.grants.decide import derive_id
from schemas.events import AuditRecord, BaselineEntitlement
from schemas.events.identity import AgentRecord

BASELINE_RULE = "baseline"


def entitlement_of(record: AgentRecord, baseline: tuple[str, ...], *, policy_revision: str,
                   until: datetime | None = None) -> BaselineEntitlement:
    """What ``record`` entitles its agent to, given its class's ``baseline`` scopes, until its
    registration lapses (``until``, judged by each view at check time)."""
    active = record.status == "active"
    cls = record.profile.agent_class
    reason = (f"baseline of class {cls} (registry revision {record.revision})" if active else
              f"agent {record.status} ({record.change} by {record.changed_by}: "
              f"{record.reason or 'no reason given'})")
    status = "active" if active else "withdrawn"
    scopes = tuple(sorted(set(baseline))) if active else ()
    ends = until.isoformat() if until is not None else ""
    source = f"{record.revision}\x1f{policy_revision}\x1f{status}\x1f{','.join(scopes)}\x1f{ends}"
    return BaselineEntitlement(
        entitlement_id=derive_id("baseline", source, record.agent_id), agent_id=record.agent_id,
        status=status, scopes=scopes, agent_class=cls, registry_revision=record.revision,
        policy_revision=policy_revision, reason=reason[:2000], cause_id=record.cause_id,
        effective_at=record.changed_at, until=until if active else None)


def baseline_audit(event: BaselineEntitlement, now: datetime) -> AuditRecord:
    """The audit record of a statement: replay answers "what could the agent do at T" from it."""
    kind = "baseline.entitled" if event.status == "active" else "baseline.withdrawn"
    return AuditRecord(
        audit_id=derive_id(f"audit-{kind}", event.entitlement_id, event.agent_id),
        kind=kind, agent_id=event.agent_id, occurred_at=now, subject_id=event.entitlement_id,
        outcome=event.status, reasons=(event.reason,), rules=(BASELINE_RULE,),
        policy_revision=event.policy_revision, inputs={"event": event.model_dump(mode="json")})
