"""Audit records of what is not a decision (pure): a policy loaded, a grant view rebuilt.

Imports broker.grants (ids), broker.policy, schemas and stdlib. Decision, risk and lifecycle
records are built in ``broker.grants`` (dead letters in ``streams.dead_letter``); these are the
other inputs an operator must see.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import datetime

from broker.grants.decide import derive_id
from broker.policy import Policy
from schemas.events import AuditRecord

POLICY_LOADED = "policy.loaded"
REBUILD = "operator.grants.rebuild"


def policy_loaded_audit(policy: Policy, now: datetime, worker: str) -> AuditRecord:
    """The record a worker writes before deciding with a revision: the bundle itself."""
    files = {name: base64.b64encode(data).decode() for name, data in policy.files}
    packed = base64.b64encode(gzip.compress(json.dumps(files).encode(), mtime=0)).decode()
    return AuditRecord(
        audit_id=derive_id("policy-loaded", f"{policy.revision}@{now.isoformat()}", worker),
        kind=POLICY_LOADED,
        agent_id=None,
        occurred_at=now,
        subject_id=policy.revision,
        outcome="loaded",
        reasons=(f"worker {worker} decides with policy {policy.name} revision "
                 f"{policy.revision} ({len(policy.files)} file(s))",),
        policy_revision=policy.revision,
        inputs={"name": policy.name, "source": policy.source, "worker": worker,
                "bundle_gzip_b64": packed},
    )


def rebuild_audit(
    actor: str, now: datetime, *, records: int, restored: int, revocations: int, undecodable: int
) -> AuditRecord:
    """The record of a rebuild of the Redis grant view from the grant topic."""
    return AuditRecord(
        audit_id=derive_id("audit-rebuild", f"{actor}@{now.isoformat()}"),
        kind=REBUILD,
        agent_id=None,
        occurred_at=now,
        subject_id="grant-view",
        outcome="rebuilt",
        reasons=(f"{actor} rebuilt the grant view from {records} grant-topic record(s): "
                 f"{restored} active grant(s), {revocations} revocation marker(s) restored, "
                 f"{undecodable} undecodable",),
        inputs={"actor": actor, "records": records, "restored": restored,
                "revocations": revocations, "undecodable": undecodable},
    )



ATTEMPT_FENCED = "escalation.attempt_fenced"


def attempt_fenced_audit(attempt: AuditRecord, owner_epoch: str, now: datetime) -> AuditRecord:
    """Voids an audited decision attempt whose commit a newer owner's fence refused.

    A worker audits each attempt before its commit; when a worker that stalled past its session
    timeout resumes mid-attempt, that record can land after the new owner's. This one says the
    attempt (``inputs.voided_audit_id``) never took effect.
    """
    epoch = attempt.inputs.get("fence_epoch")
    return AuditRecord(
        audit_id=derive_id("audit-fenced", attempt.audit_id),
        kind=ATTEMPT_FENCED,
        agent_id=attempt.agent_id,
        occurred_at=now,
        subject_id=attempt.subject_id,
        outcome="fenced",
        reasons=(f"attempt {attempt.audit_id} was refused at commit: its worker's epoch "
                 f"{epoch} was superseded by epoch {owner_epoch} (a newer owner of the "
                 "partition); it never took effect",),
        policy_revision=attempt.policy_revision,
        inputs={"voided_audit_id": attempt.audit_id, "fence_epoch": epoch,
                "owner_epoch": owner_epoch},
    )
