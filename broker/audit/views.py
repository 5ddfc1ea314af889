"""Views of the audit log (pure): who could do what at a past instant, and one agent's story.

Imports broker.audit.replay, broker.grants.delegation, schemas and stdlib. Reads records,
returns values.

A grant is active at T when the decision that took effect granted it at or before T
(``decided_at`` = the grant's ``issued_at``), and at T it had neither reached its ``expires_at``
(moved by the renewals recorded by T) nor been revoked or released. Revocations come from
``grant.revoked`` records (their ``revoked_at``) and from ``risk.observed`` records that list
the grants they revoked; releases from ``grant.release`` records that released. A delegated
grant (``grant.delegation.decided``) is active at T only while its parent, and the parent's
parent, ... were active at T too: a child never outlives its parent, even in replay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.audit.replay import DECIDED, Ref, approval_effective, effective
from broker.grants.delegation import DECIDED_KIND as DELEGATION_DECIDED
from schemas.events import AuditRecord, DelegationDecided, EscalationDecided


@dataclass(frozen=True)
class ActiveGrant:
    """One grant active at the instant asked about: who, what, why, until when."""

    grant_id: str
    agent_id: str
    request_id: str
    scopes: tuple[str, ...]
    resources: tuple[str, ...]
    issued_at: datetime
    expires_at: datetime
    ends_at: datetime  # expires_at, or the revocation that cut it short
    ended_by: str  # "expiry" or the rule that revoked it
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_revision: str
    ref: Ref
    parent_grant_id: str | None = None  # a delegated grant's parent


@dataclass(frozen=True)
class Quarantine:
    """An agent barred from escalating at the instant asked about."""

    agent_id: str
    rule: str
    since: datetime
    until: datetime
    ref: Ref


def _revocations(records: list[AuditRecord]) -> dict[str, tuple[datetime, str]]:
    """grant id -> (when it was revoked or released, by what)."""
    ended: dict[str, tuple[datetime, str]] = {}

    def note(gid: str, at: datetime, by: str) -> None:
        if gid not in ended or at < ended[gid][0]:
            ended[gid] = (at, by)

    for r in records:
        event = r.inputs.get("event")
        if r.kind in ("grant.revoked", "grant.released") and isinstance(event, dict):
            at = event.get("revoked_at") or event.get("released_at")
            note(r.subject_id, datetime.fromisoformat(str(at)) if at else r.occurred_at,
                 event.get("rule") or r.kind)
        release = r.inputs.get("release")
        if r.kind == "grant.release" and r.outcome == "released" and isinstance(release, dict):
            note(str(release.get("grant_id")), r.occurred_at, "released")
        revoked = r.inputs.get("revoked_grants")
        if r.kind == "risk.observed" and isinstance(revoked, list):
            for gid in revoked:
                note(str(gid), r.occurred_at, r.rules[0] if r.rules else "revocation")
    return ended


def _renewals(records: list[AuditRecord], at: datetime) -> dict[str, datetime]:
    """grant id -> the latest expiry a renewal recorded by ``at`` gave it."""
    until: dict[str, datetime] = {}
    for r in records:
        decision = r.inputs.get("decision")
        if (r.kind != "grant.renewal" or r.outcome != "renewed" or r.occurred_at > at
                or not isinstance(decision, dict) or not decision.get("expires_at")):
            continue
        gid, expires = str(decision.get("grant_id")), datetime.fromisoformat(
            str(decision["expires_at"]))
        if gid not in until or until[gid] < expires:
            until[gid] = expires
    return until


def _span(ref: AuditRecord, grant_id: str, agent_id: str, request_id: str,
          decision: EscalationDecided | DelegationDecided, ended: dict[str, tuple[datetime, str]],
          renewed: dict[str, datetime], parent: str | None = None) -> ActiveGrant | None:
    """The whole life of one granted decision's grant (None for a denial)."""
    if decision.outcome != "granted" or decision.expires_at is None:
        return None
    expires = max(decision.expires_at, renewed.get(grant_id, decision.expires_at))
    end, by = expires, "expiry"
    if grant_id in ended and ended[grant_id][0] < end:
        end, by = ended[grant_id]
    return ActiveGrant(
        grant_id, agent_id, request_id, decision.granted_scopes, decision.resources,
        decision.decided_at, expires, end, by, decision.matched_rules, decision.reasons,
        decision.policy_revision, Ref.of(ref), parent)


def _delegated(records: list[AuditRecord]) -> dict[tuple[str, str], tuple[AuditRecord,
                                                                        DelegationDecided]]:
    """(delegator, request id) -> the delegation decision that took effect (the last one: a
    child the store refused is recorded again as a denial)."""
    out = {}
    for record in records:
        raw = record.inputs.get("decision")
        if record.kind == DELEGATION_DECIDED and isinstance(raw, dict):
            decision = DelegationDecided.model_validate(raw)
            out[(decision.agent_id, decision.request_id)] = (record, decision)
    return out


def _chain_active(grant: ActiveGrant, spans: dict[str, ActiveGrant], at: datetime) -> bool:
    """Whether every ancestor of a delegated grant was active at ``at`` too."""
    seen: set[str] = set()
    while grant.parent_grant_id is not None:
        parent = spans.get(grant.parent_grant_id)
        if parent is None or parent.grant_id in seen or not parent.issued_at <= at < parent.ends_at:
            return False
        seen.add(parent.grant_id)
        grant = parent
    return True


def grants_as_of(records: Iterable[AuditRecord], at: datetime) -> list[ActiveGrant]:
    """Every grant active at ``at``, sorted by agent then expiry; a delegated grant only while
    its whole parent chain was active as well."""
    listed = list(records)
    ended, renewed = _revocations(listed), _renewals(listed, at)
    spans: dict[str, ActiveGrant] = {}
    for d in [*effective(listed).values(), *approval_effective(listed).values()]:
        dec = d.decision
        if dec.grant_id is not None and (g := _span(
                d.record, dec.grant_id, dec.agent_id, dec.request_id, dec, ended, renewed)):
            spans[g.grant_id] = g
    for record, deleg in _delegated(listed).values():
        if deleg.grant_id is not None and (g := _span(
                record, deleg.grant_id, deleg.delegate_id, deleg.request_id, deleg, ended,
                renewed, deleg.parent_grant_id)):
            spans[g.grant_id] = g
    out = [g for g in spans.values()
           if g.issued_at <= at < g.ends_at and _chain_active(g, spans, at)]
    return sorted(out, key=lambda g: (g.agent_id, g.expires_at, g.grant_id))


def quarantines_as_of(records: Iterable[AuditRecord], at: datetime) -> list[Quarantine]:
    """Agents under a quarantine at ``at`` (from the risk signals that imposed one)."""
    latest: dict[str, Quarantine] = {}
    for r in records:
        seconds = r.inputs.get("quarantine_s")
        if r.kind != "risk.observed" or r.outcome != "revoked" or not seconds or not r.agent_id:
            continue
        q = Quarantine(r.agent_id, r.rules[0] if r.rules else "quarantine", r.occurred_at,
                       r.occurred_at + timedelta(seconds=int(str(seconds))), Ref.of(r))
        if q.since <= at < q.until and (r.agent_id not in latest
                                        or latest[r.agent_id].until < q.until):
            latest[r.agent_id] = q
    return sorted(latest.values(), key=lambda q: q.agent_id)


@dataclass(frozen=True)
class Moment:
    """One line of an agent's story."""

    at: datetime
    kind: str
    outcome: str
    text: str
    ref: Ref


def _decided_text(r: AuditRecord, took_effect: bool) -> str:
    d, req = r.inputs.get("decision"), r.inputs.get("request")
    asked = (f"asked for {', '.join(req.get('scopes', []))} on "
             f"{len(req.get('resources', []))} resource(s) for {req.get('duration_s')}s; "
             if isinstance(req, dict) else "")
    if r.outcome == "granted" and isinstance(d, dict):
        text = (f"{asked}GRANTED {', '.join(d.get('granted_scopes', []))} until "
                f"{d.get('expires_at')} (grant {d.get('grant_id')}; rules "
                f"{', '.join(r.rules)})")
    else:
        text = f"{asked}DENIED: " + "; ".join(r.reasons[:3])
    return text if took_effect else text + " [superseded by a later attempt: not applied]"


def timeline(records: Iterable[AuditRecord], agent_id: str) -> list[Moment]:
    """Everything the audit says about one agent, in the order it happened."""
    mine = [r for r in records if r.agent_id == agent_id]
    took_effect = {d.record.audit_id for d in effective(mine).values()}
    out = []
    for r in mine:
        if r.kind == DECIDED:
            text = _decided_text(r, r.audit_id in took_effect)
        elif r.kind == "risk.observed":
            sig = r.inputs.get("signal")
            sig = sig if isinstance(sig, dict) else {}
            revoked = r.inputs.get("revoked_grants")
            count = len(revoked) if isinstance(revoked, list) else 0
            text = (f"risk {sig.get('kind')} severity {sig.get('severity')} from "
                    f"{sig.get('source')}: {r.outcome.upper()} ({'; '.join(r.reasons)})"
                    + (f"; revoked {count} grant(s)" if count else ""))
        else:
            text = f"{r.subject_id}: {r.outcome} ({'; '.join(r.reasons)})"
        out.append(Moment(r.occurred_at, r.kind, r.outcome, text, Ref.of(r)))
    return sorted(out, key=lambda m: m.at)
