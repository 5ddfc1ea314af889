"""Rebuilding the grant store from the log: live grants, revocation markers, records.

Imports redis, broker (redis adapters), schemas. Part of ``RedisGrantStore`` (a base class of
it); ``broker.adapters.kafka.rebuild`` folds the grant topic and calls these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from redis.commands.core import AsyncScript

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import records
from broker.adapters.redis.calls import call
from broker.adapters.redis.expiry import ExpiryIndex
from broker.adapters.redis.values import ms, stored
from schemas.events import AgentRevoked, EscalationDecided, GrantIssued


class Rebuild(ExpiryIndex):
    """Put back what the log says is live (never overwriting what the store already holds)."""

    _margin: timedelta
    _restore: AsyncScript

    @property
    def margin(self) -> timedelta:
        """How long a grant's records outlive its expiry."""
        return self._margin

    async def restore_grant(self, grant: GrantIssued, now: datetime) -> bool:
        """Rebuild: put back one grant from the log if still live and not revoked."""
        a = grant.agent_id
        life_until = grant.expires_at + self._margin
        await self.schedule(grant, life_until)
        done = await call(
            self._restore(
                keys=[
                    keys.grant(a, grant.grant_id),
                    keys.index(a),
                    keys.life(a, grant.grant_id),
                    keys.revoked(a),
                    keys.quarantine(a),
                ],
                args=[
                    stored(grant),
                    ms(grant.expires_at),
                    ms(now),
                    ms(life_until),
                    grant.grant_id,
                    ms(grant.issued_at),
                    0,
                    0,
                    0,
                    "",
                ],
            )
        )
        return bool(done)

    async def restore_records(
        self,
        grants: Iterable[GrantIssued],
        decision_of: Callable[[GrantIssued], EscalationDecided],
        revocations: Sequence[tuple[AgentRevoked, Sequence[GrantIssued]]],
        now: datetime,
    ) -> None:
        """Rebuild: the idempotency records of logged grants and revocations (never overwritten).

        With them a request or revoking signal redelivered after a wipe is a duplicate, as it
        was before: it cannot revive a released grant, move a renewed expiry back, or revoke
        grants issued after the revocation.
        """
        pipe = self._r.pipeline(transaction=False)
        for g in grants:  # only records that would still live (a long log has many more)
            if g.expires_at + self._margin > now:
                d, pxat = decision_of(g), ms(g.expires_at + self._margin)
                pipe.set(keys.decision(d.agent_id, d.request_id),
                         records.pack(stored(d), published=True), pxat=pxat, nx=True)
        for rev, grants in revocations:
            if rev.markers_until + self._margin > now:
                body = "[" + ",".join(stored(g) for g in grants) + "]"
                pipe.set(keys.revocation(rev.agent_id, rev.cause_event_id), body,
                         pxat=ms(rev.markers_until + self._margin), nx=True)
        await call(pipe.execute())

    async def restore_revocation(
        self,
        agent_id: str,
        revoked_at: datetime,
        marker_until: datetime,
        quarantine_until: datetime | None,
        rule: str,
        now: datetime,
    ) -> None:
        """Rebuild: put back a revocation marker (and quarantine) from the log."""
        await call(
            self._restore(
                keys=[
                    keys.grant(agent_id, "-"),
                    keys.index(agent_id),
                    keys.life(agent_id, "-"),
                    keys.revoked(agent_id),
                    keys.quarantine(agent_id),
                ],
                args=[
                    "",
                    0,
                    ms(now),
                    0,
                    "",
                    0,
                    ms(revoked_at),
                    ms(marker_until),
                    ms(quarantine_until) if quarantine_until else 0,
                    rule,
                ],
            )
        )
