"""Redis side of renewals, releases, revocations of one grant and expiry warnings.

Imports redis, broker core, schemas. Shares the grant store's client and key layout
(``keyspace.py``). A renewal, a release or an operator's revocation of one grant is one Lua script
on the agent's hash slot, recorded under its request (or command) id so a redelivery gets the
recorded answer back and can never move an expiry or end a grant twice. Grants are read under the
requesting agent's prefix only: an agent cannot renew or release another agent's grant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import lua
from broker.adapters.redis.calls import call, replicated
from broker.adapters.redis.store import RedisGrantStore, from_ms, ms
from broker.adapters.redis.values import stored
from broker.grants.renewal import RenewalOutcome
from schemas.events import (
    GrantExpiring,
    GrantIssued,
    GrantRevoked,
    ReleaseDecided,
    RenewalDecided,
)


@dataclass(frozen=True)
class Stored:
    """What a renewal or release stored: its recorded decision, or why it must be re-decided."""

    status: Literal["stored", "existing", "blocked"]
    decision_json: str
    blocked_reason: str = ""


@dataclass(frozen=True)
class DueWarning:
    """A grant whose expiry warning is due; ``event`` None when the grant no longer lives."""

    event: GrantExpiring | None
    namespaces: tuple[str, ...] | None
    member: str
    # Its expiry, where its member moves once warned; None for a member of an earlier
    # version's warning shards (removed once warned).
    expires_ms: int | None = None


class LifecycleStore:
    """Renewal, release and warning operations on the grant store's Redis."""

    def __init__(self, store: RedisGrantStore, *, margin_s: int = 3600) -> None:
        self._store = store
        self._r = store.client
        self._margin = timedelta(seconds=margin_s)
        self._renew = self._r.register_script(lua.RENEW)
        self._release = self._r.register_script(lua.RELEASE_OWN)

    async def live_grant(self, agent_id: str, grant_id: str, now: datetime) -> GrantIssued | None:
        """The agent's own grant ``grant_id`` if it is live (not ended, not past expires_at)."""
        raw = await call(self._r.get(keys.grant(agent_id, grant_id)))
        if not raw:
            return None
        grant = GrantIssued.model_validate_json(raw)
        ok = grant.agent_id == agent_id and grant.expires_at > now
        return grant if ok else None

    async def recorded(self, kind: Literal["renewal", "release"], agent_id: str,
                       request_id: str) -> bool:
        """Whether a renewal or release request was already decided (a redelivery)."""
        key = (keys.renewal if kind == "renewal" else keys.release)(agent_id, request_id)
        return bool(await call(self._r.exists(key)))

    async def renew(
        self, outcome: RenewalOutcome, grant: GrantIssued | None, *, received_at: datetime,
        now: datetime, max_grant_s: int,
    ) -> Stored:
        """Store a renewal decision (and the new expiry) once."""
        d, r = outcome.decision, outcome.renewed
        a = d.agent_id
        record_until = received_at + timedelta(seconds=max_grant_s) + self._margin
        renewed_json, new_ms, life_until, prev_ms = "", 0, record_until, 0
        if r is not None and grant is not None:
            renewed = grant.model_copy(update={"expires_at": r.expires_at})
            renewed_json, new_ms = stored(renewed), ms(r.expires_at)
            life_until = max(record_until, r.expires_at + self._margin)
            prev_ms = ms(grant.expires_at)
            await self._store.schedule(renewed, life_until)
        status, payload = await call(
            self._renew(
                keys=[keys.renewal(a, d.request_id), keys.grant(a, d.grant_id), keys.index(a),
                      keys.life(a, d.grant_id), keys.revoked(a), keys.quarantine(a),
                      keys.budget(a, d.grant_id)],
                args=[d.model_dump_json(), renewed_json, new_ms, ms(received_at), ms(now),
                      ms(max(record_until, life_until)), d.grant_id, ms(life_until), prev_ms],
            )
        )
        return _stored(status, payload)

    async def release(
        self, decision: ReleaseDecided, *, received_at: datetime, max_grant_s: int
    ) -> Stored:
        """End the agent's own grant (when the decision says released) and record the answer."""
        a = decision.agent_id
        until = received_at + timedelta(seconds=max_grant_s) + self._margin
        status, payload = await call(
            self._release(
                keys=[keys.release(a, decision.request_id), keys.grant(a, decision.grant_id),
                      keys.life(a, decision.grant_id), keys.index(a)],
                args=[decision.model_dump_json(), "1" if decision.outcome == "released" else "0",
                      decision.grant_id, ms(until)],
            )
        )
        return _stored(status, payload)

    async def revoke_one(self, revoked: GrantRevoked, *, max_grant_s: int) -> Stored:
        """End one grant for an operator's revocation, as a release ends it, and record the
        ``grant.revoked`` under the command (``cause_event_id``): a redelivery gets the recorded
        event back and ends nothing twice. ``blocked`` ('gone') when the grant is not live. On a
        cluster it returns only once a replica has it (``calls.replicated``)."""
        a, gid = revoked.agent_id, revoked.grant_id
        until = max(revoked.expires_at, revoked.revoked_at + timedelta(seconds=max_grant_s)) \
            + self._margin
        status, payload = await replicated(
            self._r, self._release, a,
            [keys.grant_revocation(a, revoked.cause_event_id), keys.grant(a, gid),
             keys.life(a, gid), keys.index(a)],
            [revoked.model_dump_json(), "1", gid, ms(until)],
            f"revocation of grant {gid}",
        )
        return _stored(status, payload)

    async def recorded_revocation(self, agent_id: str, command_id: str) -> GrantRevoked | None:
        """The grant.revoked an operator's revocation recorded, if it was carried out."""
        raw = await call(self._r.get(keys.grant_revocation(agent_id, command_id)))
        return GrantRevoked.model_validate_json(raw) if raw else None

    async def due_warnings(self, now: datetime, limit: int = 500) -> list[DueWarning]:
        """Grants whose expiry warning is due, with the warning to announce if still live.

        A member of the expiry index scored below its grant's current expiry (its life key)
        awaits its warning; one renewed since it was indexed is re-scored to its new warning
        time instead. Members of the warning shards an earlier version kept beside the expiry
        index (``keys.legacy_warning_indexes``) are read too, until they are gone.
        """
        due: list[tuple[str, int, bytes | None, str | None]] = [
            (m, s, life, None) for m, s, life in await self._store.due_members(now, limit)
            if life is not None and s < int(life)]
        legacy = keys.legacy_warning_indexes()
        due += [(m, s, life, m) for m, s, life in await self._store.due_members(now, limit, legacy)]
        pipe = self._r.pipeline(transaction=False)  # one round trip for the whole batch
        for member, _score, _life, _legacy in due:
            agent, gid, _ns = keys.parse_member(member)
            pipe.get(keys.grant(agent, gid))
        grants = await call(pipe.execute()) if due else []
        out = []
        for (member, _score, life, legacy_member), raw_grant in zip(due, grants, strict=True):
            agent, gid, namespaces = keys.parse_member(member)
            grant = GrantIssued.model_validate_json(raw_grant) if raw_grant else None
            if grant is not None and grant.expires_at > now and self._store.warn_at(grant) > now:
                index = keys.legacy_warning_index(agent) if legacy_member else \
                    keys.expiry_index(agent)
                await call(self._r.zadd(index, {member: ms(self._store.warn_at(grant))}))
                continue  # renewed since it was indexed: warn later
            # A warning that is late still goes out, so it always precedes grant.expired.
            event = (GrantExpiring(grant_id=gid, agent_id=agent, expires_at=from_ms(life),
                                   warned_at=now) if life is not None else None)
            out.append(DueWarning(event, namespaces, member,
                                  int(life) if life is not None and not legacy_member else None))
        return out

    async def ack_warnings(self, done: Sequence[DueWarning]) -> None:
        """Move announced warnings' members to their expiry (forget a moot one's)."""
        if not done:
            return
        pipe = self._r.pipeline(transaction=False)
        for d in done:
            agent = keys.parse_member(d.member)[0]
            if d.expires_ms is None:
                pipe.zrem(keys.legacy_warning_index(agent), d.member)
            else:  # XX: a member acknowledged as expired meanwhile is not brought back
                pipe.zadd(keys.expiry_index(agent), {d.member: d.expires_ms}, xx=True)
        await call(pipe.execute())


def _stored(status: bytes, payload: bytes) -> Stored:
    text = payload.decode()
    if status == b"blocked":
        return Stored("blocked", "", text)
    return Stored("stored" if status == b"stored" else "existing", text)


def recorded_renewal(stored: Stored) -> RenewalDecided:
    """The renewal decision a store call recorded."""
    return RenewalDecided.model_validate_json(stored.decision_json)


def recorded_release(stored: Stored) -> ReleaseDecided:
    """The release decision a store call recorded."""
    return ReleaseDecided.model_validate_json(stored.decision_json)


__all__ = ["DueWarning", "LifecycleStore", "Stored", "from_ms"]
