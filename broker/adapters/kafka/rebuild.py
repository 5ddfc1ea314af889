"""Rebuild the Redis grant view from the grant lifecycle topic (Kafka is the log of record).

Imports bus, redis_store, schemas. Folding the log is pure (``fold``); reading it blocks
(``collect``, run it in a thread from async code); ``apply`` writes the result. Only records the
broker signed are folded: the decode edge refuses (and counts) the rest, so a forged grant is
never restored. Live risk (what non-revoking signals raised, for ``LIVE_RISK``) is folded from
the raw audit topic's last ``LIVE_RISK``: each ``risk.observed`` record that noted risk says
until when.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, read_all
from broker.adapters.kafka.edge import Trust
from broker.adapters.redis.delegation import DelegationStore
from broker.adapters.redis.store import RedisGrantStore, ms
from broker.grants.decide import derive_id
from broker.grants.revocation import LIVE_RISK
from schemas.events import (
    AgentRevoked,
    AuditRecord,
    EscalationDecided,
    GrantExpired,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
)
from schemas.topics import AUDIT_RAW, GRANTS


@dataclass
class Folded:
    """The log folded into the state it implies at ``now``."""

    active: dict[str, GrantIssued] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    revocations: dict[str, AgentRevoked] = field(default_factory=dict)  # merged per agent
    issued: dict[str, GrantIssued] = field(default_factory=dict)  # every grant, latest expiry
    causes: list[AgentRevoked] = field(default_factory=list)  # every revocation, in log order
    risk: list[tuple[str, float, datetime]] = field(default_factory=list)  # live risk noted
    undecodable: int = 0
    records: int = 0


def fold(records: Iterable[Record], now: datetime, audit: Iterable[Record] = ()) -> Folded:
    """Active grants = issued (renewed: later expiry), minus revoked/expired/released/lapsed;
    with the raw ``audit`` records, the live risk still in force at ``now``, in log order."""
    state = Folded(risk=live_risk(audit, now))
    for rec in records:
        state.records += 1
        ev = rec.event
        if ev is None:
            state.undecodable += 1
        elif isinstance(ev, GrantIssued):
            state.issued.setdefault(ev.grant_id, ev)
            if ev.grant_id not in state.ended:
                state.active[ev.grant_id] = ev
        elif isinstance(ev, GrantRenewed):
            held = state.active.get(ev.grant_id)
            if held is not None and ev.expires_at > held.expires_at:
                state.active[ev.grant_id] = held.model_copy(update={"expires_at": ev.expires_at})
                state.issued[ev.grant_id] = state.active[ev.grant_id]
        elif isinstance(ev, GrantRevoked | GrantExpired | GrantReleased):
            state.ended.add(ev.grant_id)
            state.active.pop(ev.grant_id, None)
        elif isinstance(ev, AgentRevoked):
            # Log order: every grant of the agent issued before this record and not after the
            # revocation ends, listed or not (a store wiped before the revocation could not list
            # them); a grant issued after it (a redelivered revocation's copy) stays.
            earlier = [gid for gid, g in state.active.items()
                       if g.agent_id == ev.agent_id and g.issued_at <= ev.revoked_at]
            state.causes.append(ev)
            state.ended.update(ev.grant_ids, earlier)
            for gid in (*ev.grant_ids, *earlier):
                state.active.pop(gid, None)
            prev = state.revocations.get(ev.agent_id)
            state.revocations[ev.agent_id] = ev if prev is None else merge_revocations(prev, ev)
    live = {k: g for k, g in state.active.items() if g.expires_at > now}
    # A delegated grant lives only while its whole parent chain does (never outlives it).
    state.active = {k: g for k, g in live.items() if chain_alive(g, live)}
    return state


def chain_alive(grant: GrantIssued, active: dict[str, GrantIssued]) -> bool:
    """Whether every ancestor of ``grant`` is among the ``active`` grants."""
    seen: set[str] = set()
    while grant.parent_grant_id is not None:
        parent = active.get(grant.parent_grant_id)
        if parent is None or parent.grant_id in seen:
            return False
        seen.add(parent.grant_id)
        grant = parent
    return True


def live_risk(audit: Iterable[Record], now: datetime) -> list[tuple[str, float, datetime]]:
    """(agent, severity, until) of every risk the audit says was noted and lasts past ``now``."""
    out = []
    for rec in audit:
        ev = rec.event
        if not (isinstance(ev, AuditRecord) and ev.kind == "risk.observed"
                and ev.outcome == "noted" and ev.agent_id):
            continue
        until, signal = ev.inputs.get("noted_until"), ev.inputs.get("signal")
        if isinstance(until, str) and isinstance(signal, dict):
            ends = datetime.fromisoformat(until)
            if ends > now:
                out.append((ev.agent_id, float(signal["severity"]), ends))
    return out


def merge_revocations(a: AgentRevoked, b: AgentRevoked) -> AgentRevoked:
    """Two revocations of one agent as the markers they leave together: the later revocation,
    the longest quarantine of either (with its rule), the later marker end.

    A later revocation without a quarantine (a model change) does not lift an earlier one's
    quarantine in Redis, so a rebuild must not lift it either.
    """
    later = b if a.revoked_at <= b.revoked_at else a
    quarantines = [e for e in (a, b) if e.quarantined_until is not None]
    longest = max(quarantines, key=lambda e: e.quarantined_until or e.revoked_at, default=None)
    return later.model_copy(update={
        "quarantined_until": longest.quarantined_until if longest else None,
        "rule": longest.rule if longest else later.rule,
        "markers_until": max(a.markers_until, b.markers_until),
    })


def collect(kafka: KafkaAccess, now: datetime, trust: Trust, timeout: float = 60.0) -> Folded:
    """Read the whole grant topic and the raw audit's last ``LIVE_RISK``; fold what the broker
    signed (blocking)."""
    since = ms(now - LIVE_RISK)
    return fold(read_all(kafka, GRANTS.name, trust=trust, reader="rebuild", timeout=timeout),
                now, read_all(kafka, AUDIT_RAW.name, trust=trust, reader="rebuild",
                              timeout=timeout, since_ms=since))


async def apply(store: RedisGrantStore, folded: Folded, now: datetime) -> int:
    """Write revocation markers first, then the active grants; mark the view built."""
    for rev in folded.revocations.values():
        if rev.markers_until > now:
            blocked = max(rev.revoked_at, rev.quarantined_until or rev.revoked_at)
            await store.restore_revocation(
                rev.agent_id,
                blocked,
                rev.markers_until,
                rev.quarantined_until,
                rev.rule,
                now,
            )
    for agent_id, severity, until in folded.risk:  # in log order: the store keeps the highest
        await store.note_risk(agent_id, severity, until)
    restored = 0
    for grant in folded.active.values():
        restored += await store.restore_grant(grant, now)
    # The children sets, so that a parent's end after the rebuild still ends its children.
    await DelegationStore(store.client).restore_children(
        [(folded.active[g.parent_grant_id], g) for g in folded.active.values()
         if g.parent_grant_id is not None], store.margin)
    await store.restore_records(
        folded.issued.values(), decision_of,
        [(rev, [folded.issued[i] for i in rev.grant_ids if i in folded.issued])
         for rev in folded.causes], now)
    await store.mark_built(now)
    return restored


def decision_of(grant: GrantIssued) -> EscalationDecided:
    """The decision record a logged grant implies (so a redelivered request stays a duplicate)."""
    return EscalationDecided(
        decision_id=derive_id("decision", grant.request_id, grant.agent_id),
        request_id=grant.request_id, agent_id=grant.agent_id, outcome="granted",
        granted_scopes=grant.scopes, resources=grant.resources, grant_id=grant.grant_id,
        expires_at=grant.expires_at,
        duration_s=max(int((grant.expires_at - grant.issued_at).total_seconds()), 0),
        matched_rules=grant.rules, reasons=("restored from the grant topic by a rebuild",),
        policy_revision=grant.policy_revision, decided_at=grant.issued_at,
    )
