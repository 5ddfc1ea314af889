"""Audit records of the checks enforcement points report (pure). Imports schemas, grants.decide.

One record per check (kind ``check.performed``): the agent, the scope, the resource (where the
redactor hashes resources: ``grant.resources``), the answer, the grant that allowed it and the
point that answered; and one ``checks.dropped`` record when a report says checks were dropped.
Ids derive from the report id and the check's position, so a redelivered report rewrites the
same records. ``matches`` answers "who performed this check on this resource, under which grant".
"""

from __future__ import annotations

from datetime import datetime

from broker.grants.decide import derive_id
from schemas.events import AuditRecord, ChecksReported

CHECK_KIND = "check.performed"
DROPPED_KIND = "checks.dropped"


def check_audits(report: ChecksReported, now: datetime) -> tuple[AuditRecord, ...]:
    """The audit records of one report."""
    records = [
        AuditRecord(
            audit_id=derive_id("audit-check", f"{report.report_id}\x1f{n}", report.agent_id),
            kind=CHECK_KIND, agent_id=report.agent_id, occurred_at=check.checked_at,
            subject_id=check.grant_id or "", outcome="allowed" if check.allowed else "denied",
            reasons=(f"{check.scope} on {check.resource or '*'} at {report.service}: "
                     f"{check.reason}",),
            inputs={"check": {**check.model_dump(mode="json", exclude={"resource"}),
                              "service": report.service, "report_id": report.report_id},
                    "grant": {"grant_id": check.grant_id,
                              "resources": [check.resource] if check.resource else []},
                    "now": now.isoformat()},
        )
        for n, check in enumerate(report.checks)
    ]
    if report.dropped:
        records.append(AuditRecord(
            audit_id=derive_id("audit-checks-dropped", report.report_id, report.agent_id),
            kind=DROPPED_KIND, agent_id=report.agent_id, occurred_at=report.reported_at,
            subject_id=report.service, outcome="dropped",
            reasons=(f"{report.service} dropped {report.dropped} check report(s) (its memory "
                     "bound, or Kafka unavailable)",),
            inputs={"service": report.service, "dropped": report.dropped,
                    "report_id": report.report_id, "now": now.isoformat()}))
    return tuple(records)


def matches(record: AuditRecord, *, resource: str | None = None, scope: str | None = None,
            agent: str | None = None, grant: str | None = None) -> bool:
    """Whether a ``check.performed`` record is one asked about. ``resource`` is the value as
    stored: the clear value, or its HMAC when the audit redacts resources."""
    if record.kind != CHECK_KIND:
        return False
    check = record.inputs.get("check")
    held = record.inputs.get("grant")
    if not isinstance(check, dict) or not isinstance(held, dict):
        return False
    resources = held.get("resources") or []
    return ((resource is None or resource in resources)
            and (scope is None or check.get("scope") == scope)
            and (agent is None or record.agent_id == agent)
            and (grant is None or record.subject_id == grant))
