"""Baseline entitlements in the audit (pure): which agents held which baseline at an instant.

Imports broker.audit.replay, broker.audit.views, schemas and stdlib. Reads records, returns values.

The worker audits every statement of an agent's baseline (``baseline.entitled`` or
``baseline.withdrawn``, the statement itself in ``inputs.event``). At T an agent holds the
baseline of its latest statement recorded by T (newest registry revision first, then the later
record), unless that statement is a withdrawal or a quarantine imposed by a revocation covers T.
Workers state every agent's baseline again when they start, so a window of the audit that
begins after the original statement still holds a current one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from broker.audit.replay import Ref
from broker.audit.views import quarantines_as_of
from schemas.events import AuditRecord

ENTITLED, WITHDRAWN = "baseline.entitled", "baseline.withdrawn"


@dataclass(frozen=True)
class StandingBaseline:
    """One agent's baseline at the instant asked about, and the statement that gave it."""

    agent_id: str
    scopes: tuple[str, ...]
    agent_class: str
    stated_at: datetime
    registry_revision: int
    policy_revision: str
    reason: str
    ref: Ref


def _statement(r: AuditRecord) -> dict[str, object] | None:
    event = r.inputs.get("event")
    if r.kind not in (ENTITLED, WITHDRAWN) or not r.agent_id or not isinstance(event, dict):
        return None
    return event


def baselines_as_of(records: Iterable[AuditRecord], at: datetime) -> list[StandingBaseline]:
    """Every agent holding a baseline at ``at``, by agent id."""
    rows = list(records)
    latest: dict[str, tuple[tuple[int, datetime], AuditRecord, dict[str, object]]] = {}
    for r in rows:
        event = _statement(r)
        if event is None or r.occurred_at > at or r.agent_id is None:
            continue
        order = (int(str(event.get("registry_revision", 0))), r.occurred_at)
        held = latest.get(r.agent_id)
        if held is None or order >= held[0]:
            latest[r.agent_id] = (order, r, event)
    barred = {q.agent_id for q in quarantines_as_of(rows, at)}
    out = []
    for agent, ((revision, _), r, event) in latest.items():
        scopes = event.get("scopes")
        if r.kind != ENTITLED or agent in barred or not isinstance(scopes, list):
            continue
        out.append(StandingBaseline(
            agent, tuple(str(s) for s in scopes), str(event.get("agent_class", "")),
            r.occurred_at, revision, r.policy_revision, r.reasons[0] if r.reasons else "",
            Ref.of(r)))
    return sorted(out, key=lambda b: b.agent_id)
