"""What-if (pure): the recorded requests decided again by a candidate policy, and what changes.

Imports broker.audit.replay, broker.policy, schemas and stdlib. Reads records, returns a report;
it writes nothing (no Redis, no Kafka): the candidate never touches a live grant.

Each effective, reproducible decision in the window is decided again from its recorded inputs
(request, state, live risk, times) by the candidate. The agent profile is the candidate's when
the candidate bundle has an agent directory (it would be, once deployed), else the recorded one.
A change is one that alters what the agent may do: the outcome, the granted scopes, the
resources or the duration. Denials found outside the policy's rules (a rate limit's token
bucket, the audit unavailable) cannot be decided again and are left out (counted as skipped).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from broker.audit.replay import Decided, Ref, effective, reproduce
from broker.policy import Policy
from schemas.events import AgentProfile, AuditRecord, EscalationDecided

GRANTED_TO_DENIED = "granted -> denied"
DENIED_TO_GRANTED = "denied -> granted"
SCOPES = "scopes changed"
RESOURCES = "resources changed"
DURATION = "duration changed"
CATEGORIES = (GRANTED_TO_DENIED, DENIED_TO_GRANTED, SCOPES, RESOURCES, DURATION)


def summary(d: EscalationDecided) -> str:
    """One line: outcome, scopes, duration and the rules that decided."""
    if d.outcome == "granted":
        return (f"granted {', '.join(d.granted_scopes)} for {d.duration_s}s "
                f"(rules {', '.join(d.matched_rules)})")
    rules = ", ".join(dict.fromkeys(x.rule for x in d.denied)) or "-"
    return f"denied (rules {rules})"


@dataclass(frozen=True)
class Change:
    """One recorded decision the candidate would decide differently."""

    category: str
    ref: Ref
    agent_id: str
    request_id: str
    before: EscalationDecided
    after: EscalationDecided

    def __str__(self) -> str:
        return (f"{self.category}: request {self.request_id} of {self.agent_id} at "
                f"{self.ref}: {summary(self.before)} => {summary(self.after)}")


@dataclass
class DiffReport:
    """Counts and every change, for one candidate over one window."""

    candidate: str
    compared: int = 0
    unchanged: int = 0
    skipped: int = 0  # outside denials (rate limit, audit down) and records without inputs
    profiles: str = "recorded"
    changes: list[Change] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(c.category for c in self.changes)
        return {name: counted.get(name, 0) for name in CATEGORIES}


def category(before: EscalationDecided, after: EscalationDecided) -> str | None:
    """How a decision changed (the first that applies), or None if it grants the same."""
    if before.outcome != after.outcome:
        return GRANTED_TO_DENIED if before.outcome == "granted" else DENIED_TO_GRANTED
    if before.outcome == "denied":
        return None
    if set(before.granted_scopes) != set(after.granted_scopes):
        return SCOPES
    if set(before.resources) != set(after.resources):
        return RESOURCES
    if (before.duration_s, before.expires_at) != (after.duration_s, after.expires_at):
        return DURATION
    return None


def diff(
    records: Iterable[AuditRecord],
    candidate: Policy,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> DiffReport:
    """Decide every effective recorded request in [since, until) again with ``candidate``."""
    use_candidate_profiles = bool(candidate.agents())
    report = DiffReport(candidate=f"{candidate.name} {candidate.revision} ({candidate.source})",
                        profiles="candidate" if use_candidate_profiles else "recorded")
    for d in effective(records).values():
        at = d.record.occurred_at
        if (since and at < since) or (until and at >= until):
            continue
        if not d.reproducible or d.blocked:
            report.skipped += 1
            continue
        report.compared += 1
        profile = _profile(d, candidate) if use_candidate_profiles else "recorded"
        after = reproduce(d, candidate, profile=profile)
        kind = category(d.decision, after)
        if kind is None:
            report.unchanged += 1
        else:
            report.changes.append(Change(kind, Ref.of(d.record), d.decision.agent_id,
                                         d.decision.request_id, d.decision, after))
    return report


def _profile(d: Decided, candidate: Policy) -> AgentProfile | None:
    return candidate.agent(d.decision.agent_id)
