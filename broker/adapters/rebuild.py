"""Rebuild the Redis grant view from the grant lifecycle topic (Kafka is the log of record).

Imports bus, redis_store, schemas. Folding the log is pure (``fold``); reading it blocks
(``collect``, run it in a thread from async code); ``apply`` writes the result.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from broker.adapters.bus import Record, read_all
from broker.adapters.redis_store import RedisGrantStore
from schemas.events import (
    AgentRevoked,
    GrantExpired,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
)
from schemas.topics import GRANTS


@dataclass
class Folded:
    """The log folded into the state it implies at ``now``."""

    active: dict[str, GrantIssued] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    revocations: dict[str, AgentRevoked] = field(default_factory=dict)  # latest per agent
    undecodable: int = 0
    records: int = 0


def fold(records: Iterable[Record], now: datetime) -> Folded:
    """Active grants = issued (renewed: later expiry), minus revoked/expired/released/lapsed."""
    state = Folded()
    for rec in records:
        state.records += 1
        ev = rec.event
        if ev is None:
            state.undecodable += 1
        elif isinstance(ev, GrantIssued):
            if ev.grant_id not in state.ended:
                state.active[ev.grant_id] = ev
        elif isinstance(ev, GrantRenewed):
            held = state.active.get(ev.grant_id)
            if held is not None and ev.expires_at > held.expires_at:
                state.active[ev.grant_id] = held.model_copy(update={"expires_at": ev.expires_at})
        elif isinstance(ev, GrantRevoked | GrantExpired | GrantReleased):
            state.ended.add(ev.grant_id)
            state.active.pop(ev.grant_id, None)
        elif isinstance(ev, AgentRevoked):
            # Log order, not clocks: every grant of the agent issued before this record ends,
            # listed or not (a store wiped before the revocation could not list them).
            earlier = [gid for gid, g in state.active.items() if g.agent_id == ev.agent_id]
            state.ended.update(ev.grant_ids, earlier)
            for gid in (*ev.grant_ids, *earlier):
                state.active.pop(gid, None)
            prev = state.revocations.get(ev.agent_id)
            state.revocations[ev.agent_id] = ev if prev is None else merge_revocations(prev, ev)
    state.active = {k: g for k, g in state.active.items() if g.expires_at > now}
    return state


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


def collect(bootstrap: str, now: datetime, timeout: float = 60.0) -> Folded:
    """Read the whole grant topic and fold it (blocking)."""
    return fold(read_all(bootstrap, GRANTS.name, timeout=timeout), now)


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
    restored = 0
    for grant in folded.active.values():
        restored += await store.restore_grant(grant, now)
    await store.mark_built(now)
    return restored
