"""A view's in-memory grant index: agent -> scope -> held grants. Imports schemas, bus, compact.

Written by one thread (the view's consumer), read by any: a change copies only the maps it
touches (the agent's grants, its scope map and the changed scopes' entries, each a C-level dict
copy) and swaps them in (copy on write), so a check is three dict lookups and never takes a
lock, and applying a record costs the size of the maps it touches, never a rebuild of all the
agent's grants (an agent holding thousands is replayed in linear time).
Only records that passed the decode edge are applied. A record refused there denies its agent
only when its signature verified (the broker wrote it, this view cannot read it: it may be a
revocation, so fail closed); a forged or unsigned one changes nothing, so it locks no one out.
Memory is bounded: at most ``max_entries`` ended grant ids (oldest forgotten first: a grant
ended that long ago has expired too) and as many unreadable agents are remembered.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from broker.adapters.kafka.bus import Record
from broker.delivery.bounded import Bounded
from broker.sdk.resource.baseline import BaselineIndex
from broker.sdk.resource.compact import HeldGrant, us
from schemas.events import (
    AGENT_ID_PATTERN,
    AgentRevoked,
    BaselineEntitlement,
    GrantExpired,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
)


class Verdict:
    """A check's answer and why; an allowing verdict carries the grant and its expiry, or the
    baseline entitlement that allows it (standing, no expiry: not a grant)."""

    __slots__ = ("_grant", "_held", "_now", "_reason", "allowed", "baseline", "unavailable")

    def __init__(
        self, allowed: bool, reason: str = "", grant: GrantIssued | None = None,
        now: float | None = None, held: HeldGrant | None = None, *, unavailable: bool = False,
        baseline: BaselineEntitlement | None = None,
    ) -> None:
        self.allowed = allowed
        self._grant = grant
        self._held = held  # the view's record: the event is rebuilt only if asked for
        self.baseline = baseline
        self._reason = reason
        self._now = now
        # Denied because the view cannot vouch for its answer yet (stale, catching up, token
        # not reached): retry later, unlike a denial on the merits.
        self.unavailable = unavailable

    @property
    def grant(self) -> GrantIssued | None:
        """The grant that allows (None: denied, or allowed by a baseline entitlement)."""
        if self._grant is None and self._held is not None:
            self._grant = self._held.issued()
        return self._grant

    @property
    def reason(self) -> str:
        """Why: the grant, its absolute expiry and the time left; or the cause of the denial."""
        held = self._held or self._grant
        if self._reason or held is None:
            if not self._reason and self.baseline is not None:
                return f"baseline entitlement: {self.baseline.reason}"
            return self._reason
        left = held.expires_at.timestamp() - (self._now or time.time())
        return f"grant {held.grant_id} until {held.expires_at.isoformat()} ({left:.1f}s left)"

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return f"Verdict(allowed={self.allowed}, reason={self.reason!r})"


# Refusal reasons of a record the broker signed for another topic (replayed here by a writer
# past the ACLs): a view that is given one has nothing to fail closed about.
COPIED = frozenset({"wrong-topic", "wrong-type"})
MAX_CHAIN = 16  # delegation depth a view follows; a deeper chain is denied
# An agent's held grants: scope -> grant id -> grant. Published maps are never changed in place.
Scopes = dict[str, dict[str, HeldGrant]]


class GrantIndex:
    """Active grants by agent and scope; ended grant ids are remembered and never come back."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._grants: dict[str, dict[str, HeldGrant]] = {}
        self._by_scope: dict[str, Scopes] = {}
        self._ended: Bounded[str, None] = Bounded(max_entries)
        self._poisoned: Bounded[str, str] = Bounded(max_entries)
        self._unreadable = self._poisoned.view  # read-only, C-speed membership for checks
        self.baselines = BaselineIndex()
        self.undecodable = 0
        self.refused = 0

    def allows(
        self, agent_id: str, scope: str, resource: str, now: datetime | None = None
    ) -> Verdict:
        """The answer from memory (the view has checked its freshness first): a grant, else
        the agent's baseline entitlement, else a denial saying why."""
        if self._unreadable and agent_id in self._unreadable:
            return Verdict(False, self._poisoned.get(agent_id) or "unreadable event")
        t = now.timestamp() if now is not None else time.time()
        # The allowing path inline (a check is the view's hot path): the first held grant of
        # the scope that covers the resource, is unexpired, and whose chain lives.
        held = self._by_scope.get(agent_id)
        entries = held.get(scope) if held is not None else None
        if entries:
            t_us = t * 1_000_000
            for grant in entries.values():
                if (not grant.members or resource in grant.members) \
                        and grant.expires_us > t_us \
                        and (grant.parent_grant_id is None or self._parent_lives(grant, t_us)):
                    return Verdict(True, "", None, t, grant)
        verdict = self._not_granted(agent_id, scope, resource, entries, t)
        allowed, why, statement = self.baselines.entitled(agent_id, scope, t)
        if allowed:
            return Verdict(True, "", None, t, baseline=statement)
        return Verdict(False, f"{verdict.reason}; {why}") if why else verdict

    def _not_granted(self, agent_id: str, scope: str, resource: str,
                     entries: dict[str, HeldGrant] | None, t: float) -> Verdict:
        """Why no held grant allows: the last matching grant's end, or none held."""
        expired = None
        t_us = t * 1_000_000
        for grant in (entries or {}).values():
            if not grant.members or resource in grant.members:
                expired = grant
        if expired is not None and expired.parent_grant_id and expired.expires_us > t_us:
            return Verdict(False, f"grant {expired.grant_id} was delegated from grant "
                           f"{expired.parent_grant_id}, which is no longer active")
        if expired is not None:
            return Verdict(
                False, f"grant {expired.grant_id} expired at {expired.expires_at.isoformat()}"
            )
        return Verdict(False, f"no active grant of {scope} on {resource or '*'} for {agent_id}")

    def _parent_lives(self, grant: HeldGrant, t_us: float) -> bool:
        """A delegated grant holds only while every grant up its chain is active here (its
        parent's end, applied from the same topic, denies it at once: fail closed)."""
        for _ in range(MAX_CHAIN):
            if grant.parent_grant_id is None:
                return True
            if not grant.delegators or grant.parent_grant_id in self._ended:
                return False
            parent = self._grants.get(grant.delegators[0], {}).get(grant.parent_grant_id)
            if parent is None or parent.expires_us <= t_us:
                return False
            grant = parent
        return False

    def state(self, agent_id: str, grant_id: str, now: datetime | None = None) -> str:
        """'active', 'ended' (revoked, released, expired, or its agent unreadable), 'unknown'."""
        if grant_id in self._ended or agent_id in self._poisoned:
            return "ended"
        grant = self._grants.get(agent_id, {}).get(grant_id)
        if grant is None:
            return "unknown"
        t = (now or datetime.now(UTC)).timestamp()
        t_us = t * 1_000_000
        return "active" if grant.expires_us > t_us and self._parent_lives(grant, t_us) \
            else "ended"

    def active(self, agent_id: str, now: datetime | None = None) -> list[Verdict]:
        """The agent's live grants, as allowing verdicts (absolute expiry and time left)."""
        t = (now or datetime.now(UTC)).timestamp()
        grants = self._grants.get(agent_id, {}).values()
        t_us = t * 1_000_000
        return [Verdict(True, "", None, t, g) for g in grants if g.expires_us > t_us]

    def apply(self, record: Record) -> AgentRevoked | None:
        """Apply one record of the grant topic; returns the agent revocation it applied, if any."""
        ev = record.event
        if ev is None:
            # A broker record copied from another topic is readable, just not ours: not a
            # revocation we might be missing, so it denies no one.
            if record.authentic and record.reason not in COPIED:
                self._poison(record)
            else:
                self.refused += 1  # unsigned or forged: counted by the edge, applied nowhere
            return None
        if isinstance(ev, GrantIssued):
            if ev.grant_id not in self._ended:
                self._put(HeldGrant(ev))
        elif isinstance(ev, GrantRenewed):
            old = self._grants.get(ev.agent_id, {}).get(ev.grant_id)
            if old is not None and ev.expires_at > old.expires_at:
                self._put(old.extended(ev.expires_at))
        elif isinstance(ev, GrantRevoked | GrantExpired | GrantReleased):
            self._end(ev.agent_id, (ev.grant_id,))
        elif isinstance(ev, AgentRevoked):
            # Grants issued after the revocation (seen again on a redelivery) are not its own.
            revoked_us = us(ev.revoked_at)
            earlier = [gid for gid, g in self._grants.get(ev.agent_id, {}).items()
                       if g.issued_us <= revoked_us]
            self._end(ev.agent_id, (*earlier, *ev.grant_ids))
            self.baselines.revoked(ev)
            return ev
        elif isinstance(ev, BaselineEntitlement):
            self.baselines.apply(ev)
        return None

    def _poison(self, record: Record) -> None:
        """An event the broker signed but we cannot read may be a revocation: deny its agent."""
        self.undecodable += 1
        agent = (record.key or b"").decode(errors="replace")
        if re.fullmatch(AGENT_ID_PATTERN, agent):
            self._poisoned.put(agent, (
                f"an event about {agent} at {record.topic}@{record.partition}:{record.offset} "
                f"could not be decoded ({record.error}); denying it until this view is "
                "restarted on a version that reads it (fail closed)"
            ))

    def _put(self, grant: HeldGrant) -> None:
        """Hold ``grant`` (new, or replacing the one with its id, e.g. renewed)."""
        agent = grant.agent_id
        grants = dict(self._grants.get(agent, {}))
        old = grants.get(grant.grant_id)
        grants[grant.grant_id] = grant
        scopes = dict(self._by_scope.get(agent, {}))
        if old is not None:
            _drop(scopes, old)
        for scope in grant.scopes:
            held = dict(scopes.get(scope, {}))
            held[grant.grant_id] = grant
            scopes[scope] = held
        self._grants[agent] = grants
        self._by_scope[agent] = scopes

    def _end(self, agent_id: str, grant_ids: tuple[str, ...]) -> None:
        for grant_id in grant_ids:
            self._ended.put(grant_id, None)
        current = self._grants.get(agent_id, {})
        gone = [current[g] for g in dict.fromkeys(grant_ids) if g in current]
        if not gone:
            return
        grants = dict(current)
        scopes = dict(self._by_scope.get(agent_id, {}))
        for grant in gone:
            del grants[grant.grant_id]
            _drop(scopes, grant)
        if grants:
            self._grants[agent_id] = grants
            self._by_scope[agent_id] = scopes
        else:
            self._grants.pop(agent_id, None)
            self._by_scope.pop(agent_id, None)


def _drop(scopes: Scopes, grant: HeldGrant) -> None:
    """Remove ``grant`` from an unpublished scope map (copying each scope's entries it touches)."""
    for scope in grant.scopes:
        held = scopes.get(scope)
        if held is None or grant.grant_id not in held:
            continue
        if len(held) == 1:
            del scopes[scope]
        else:
            held = dict(held)
            del held[grant.grant_id]
            scopes[scope] = held
