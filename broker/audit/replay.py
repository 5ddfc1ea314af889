"""Replay of recorded decisions (pure): which decision took effect, reproduce it, what-if.

Imports schemas, broker.grants, broker.policy and stdlib. Nothing here writes anywhere: replay
and what-if read audit records and return values.

A request may have several ``escalation.decided`` records (each attempt is audited before its
commit; see ``broker.grants.decide``); the last one of the newest partition owner (fence
epoch) is the one that took effect. A record is *reproducible* when it carries the inputs
(request, profile, state, risk, times); running ``Policy.evaluate`` and ``decide`` on them with
the recorded revision gives back the recorded decision, field for field, or the difference is
reported as drift.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from broker.audit.records import POLICY_LOADED
from broker.grants.decide import AgentState, decide
from broker.policy import Policy, RiskContext, load_policy_files
from schemas.events import (
    AgentProfile,
    AuditRecord,
    EscalationDecided,
    EscalationRequested,
    ScopeDenial,
)

DECIDED = "escalation.decided"


@dataclass(frozen=True)
class Ref:
    """Where a record sits in the audit chain (for naming it in reports)."""

    partition: int | None
    seq: int | None
    audit_id: str

    @classmethod
    def of(cls, record: AuditRecord) -> Ref:
        chain = record.chain
        return cls(chain.partition if chain else None, chain.seq if chain else None,
                   record.audit_id)

    def __str__(self) -> str:
        where = f"partition {self.partition} seq {self.seq}" if self.seq is not None else "raw"
        return f"{where} ({self.audit_id})"


@dataclass(frozen=True)
class Decided:
    """One ``escalation.decided`` record and the decision it carries."""

    record: AuditRecord
    decision: EscalationDecided

    @property
    def reproducible(self) -> bool:
        """True when the record carries the inputs needed to decide again."""
        return isinstance(self.record.inputs.get("request"), dict)

    @property
    def blocked(self) -> bool:
        """True for a denial found outside the policy (a rate limit, the audit unavailable)."""
        return "blocked_by" in self.record.inputs


def decided(records: Iterable[AuditRecord]) -> list[Decided]:
    """Every decision record, in log order."""
    out = []
    for record in records:
        raw = record.inputs.get("decision")
        if record.kind == DECIDED and isinstance(raw, dict):
            out.append(Decided(record, EscalationDecided.model_validate(raw)))
    return out


APPROVAL_DECIDED = "approval.decided"  # the final decision of a request held for approval


def approval_effective(records: Iterable[AuditRecord]) -> dict[tuple[str, str], Decided]:
    """(agent, request id) -> the final decision of each request held for approval.

    Listed apart from ``effective``: such a decision depends on the votes, so replay does not
    decide it again from the request; the last record of a request is the one that took effect.
    """
    out: dict[tuple[str, str], Decided] = {}
    for record in records:
        raw = record.inputs.get("decision")
        if record.kind == APPROVAL_DECIDED and isinstance(raw, dict):
            decision = EscalationDecided.model_validate(raw)
            out[(decision.agent_id, decision.request_id)] = Decided(record, decision)
    return out


def _epoch(d: Decided) -> int:
    epoch = d.record.inputs.get("fence_epoch")
    return epoch if isinstance(epoch, int) else 0


def effective(records: Iterable[AuditRecord]) -> dict[tuple[str, str], Decided]:
    """(agent, request id) -> the decision record that took effect.

    That is the last one written by the newest owner of the request's partition (highest fence
    epoch): a worker fenced between its audit write and its commit may append an attempt that
    never took effect after the new owner's decision.
    """
    out: dict[tuple[str, str], Decided] = {}
    for d in decided(records):
        key = (d.decision.agent_id, d.decision.request_id)
        if key not in out or _epoch(d) >= _epoch(out[key]):
            out[key] = d
    return out


def _when(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def _state(raw: object) -> AgentState:
    data = raw if isinstance(raw, dict) else {}
    q, rv = data.get("quarantined_until"), data.get("revoked_at")
    return AgentState(
        quarantined_until=_when(q) if q else None,
        quarantine_rule=str(data.get("quarantine_rule") or ""),
        revoked_at=_when(rv) if rv else None,
    )


def reproduce(
    d: Decided, policy: Policy, *, profile: AgentProfile | str | None = "recorded"
) -> EscalationDecided:
    """Decide the recorded request again with ``policy``, from the recorded inputs only.

    ``profile`` is the agent profile to use; ``"recorded"`` (the default) uses the one recorded.
    """
    inputs = d.record.inputs
    request = EscalationRequested.model_validate(inputs["request"])
    agent = profile if not isinstance(profile, str) else (
        AgentProfile.model_validate(inputs["agent"]) if inputs.get("agent") else None)
    raw_risk = inputs.get("risk")
    risk = (RiskContext(**raw_risk) if isinstance(raw_risk, dict)
            else RiskContext(request=request.risk_score))
    now, received_at = _when(inputs["now"]), _when(inputs["received_at"])
    blocked = inputs.get("blocked_by")
    evaluation = policy.evaluate(request, agent, risk, now)
    return decide(
        request, evaluation, agent=agent, state=_state(inputs.get("state")),
        received_at=received_at, now=now, risk=risk,
        blocked_by=ScopeDenial.model_validate(blocked) if isinstance(blocked, dict) else None,
    ).decision


def differences(recorded: EscalationDecided, replayed: EscalationDecided) -> dict[str, Any]:
    """field -> (recorded, replayed) for every field that differs."""
    a, b = recorded.model_dump(mode="json"), replayed.model_dump(mode="json")
    return {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}


@dataclass(frozen=True)
class Drift:
    """A recorded decision that replay did not reproduce, and the record that shows it."""

    ref: Ref
    request_id: str
    agent_id: str
    fields: dict[str, Any]

    def __str__(self) -> str:
        diff = "; ".join(f"{k}: recorded {v[0]!r}, replayed {v[1]!r}"
                         for k, v in self.fields.items())
        return f"drift at {self.ref}, request {self.request_id} of {self.agent_id}: {diff}"


@dataclass
class ReplayReport:
    """What replaying the decisions of a log found."""

    decisions: int = 0
    reproduced: int = 0
    confirmations: int = 0  # records that restate a decision stored earlier (no inputs)
    drift: list[Drift] = field(default_factory=list)
    missing_revisions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.drift and not self.missing_revisions


def check(
    records: Iterable[AuditRecord],
    policies: Mapping[str, Policy],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ReplayReport:
    """Replay every decision record (each attempt, not only the effective one) in the window."""
    report = ReplayReport()
    for d in decided(records):
        at = d.record.occurred_at
        if (since and at < since) or (until and at >= until):
            continue
        report.decisions += 1
        if not d.reproducible:
            report.confirmations += 1
            continue
        policy = policies.get(d.decision.policy_revision)
        if policy is None:
            rev = d.decision.policy_revision
            report.missing_revisions[rev] = report.missing_revisions.get(rev, 0) + 1
            continue
        diff = differences(d.decision, reproduce(d, policy))
        if diff:
            report.drift.append(Drift(Ref.of(d.record), d.decision.request_id,
                                      d.decision.agent_id, diff))
        else:
            report.reproduced += 1
    return report


# --- policy revisions recorded in the log ------------------------------------------------------


def policies_in(records: Iterable[AuditRecord]) -> dict[str, Policy]:
    """Every policy revision recorded in the log, loaded from the bytes the workers ran."""
    out: dict[str, Policy] = {}
    for record in records:
        packed = record.inputs.get("bundle_gzip_b64")
        if record.kind != POLICY_LOADED or record.policy_revision in out or not packed:
            continue
        files = json.loads(gzip.decompress(base64.b64decode(str(packed))))
        contents = [(name, base64.b64decode(data)) for name, data in files.items()]
        # The workers ran these bytes: load them as they ran, even if a condition would not
        # type-check today, so that replay reproduces what was decided.
        policy = load_policy_files(contents, f"audit:{record.audit_id}", check_types=False)
        if policy.revision == record.policy_revision:
            out[policy.revision] = policy
    return out


def hmac_reads(policy: Policy, fields: Iterable[str]) -> list[str]:
    """Rules whose conditions read a field the audit stores as an HMAC (replay cannot see it)."""
    names = [f for f in fields if f.split(".")[0] in ("request", "signal")]
    found = []
    rules = [(r.id, r.when.source) for r in policy.escalation_rules]
    rules += [(r.id, r.when.source) for r in policy.deny_rules]
    rules += [(r.id, r.when.source) for r in policy.revocation_rules]
    for rule_id, source in rules:
        for name in names:
            if name in source:
                found.append(f"rule {rule_id} reads {name}, which the audit stores as an HMAC: "
                             "replay is exact only if the rule uses its count or equality")
    return found
