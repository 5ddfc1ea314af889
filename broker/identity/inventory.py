"""The agent inventory (pure): every agent, what it holds now, and what needs attention.

Imports schemas and broker.policy.model; time is an argument. The "inventory your AI agents"
step: for each registered agent its owner, model, baseline (from its class), the grants it holds
right now, when it last acted, and flags: no owner, stale or missing keys, a class the policy
does not define, a status other than active, and the policy's lifecycle limits (dormant, a key
nearing or past the maximum key age, a lapsed registration).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.identity.lifecycle import lifecycle_flags
from broker.policy.lifecycle import AgentLifecycle
from broker.policy.model import AgentClass
from schemas.events import AgentRecord, GrantIssued

NO_OWNER = frozenset({"", "-", "none", "unowned", "unknown", "n/a", "nobody"})


@dataclass(frozen=True)
class InventoryRow:
    """One agent in the inventory."""

    agent_id: str
    owner: str
    agent_class: str
    model: str
    status: str
    baseline: tuple[str, ...]
    grants: tuple[GrantIssued, ...]
    last_acted: datetime | None
    newest_key_at: datetime | None
    flags: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        """JSON-ready, with absolute times."""
        return {
            "agent_id": self.agent_id, "owner": self.owner, "agent_class": self.agent_class,
            "model": self.model, "status": self.status, "baseline": list(self.baseline),
            "holds": [{"grant_id": g.grant_id, "scopes": list(g.scopes),
                       "resources": list(g.resources), "expires_at": g.expires_at.isoformat()}
                      for g in self.grants],
            "last_acted": self.last_acted.isoformat() if self.last_acted else None,
            "newest_key_at": self.newest_key_at.isoformat() if self.newest_key_at else None,
            "flags": list(self.flags),
        }


def _flags(record: AgentRecord, known: bool, newest: datetime | None, now: datetime,
           key_max_age: timedelta) -> tuple[str, ...]:
    flags = []
    if record.profile.owner.strip().lower() in NO_OWNER:
        flags.append("no-owner")
    if newest is None:
        flags.append("no-active-key")
    elif now - newest > key_max_age:
        flags.append("stale-key")
    if not known:
        flags.append("unknown-class")
    if record.status != "active":
        flags.append(record.status)
    return tuple(flags)


def inventory_rows(records: list[AgentRecord], classes: Mapping[str, AgentClass],
                   held: Mapping[str, list[GrantIssued]], acted: Mapping[str, datetime], *,
                   now: datetime, key_max_age: timedelta,
                   lifecycle: AgentLifecycle | None = None) -> list[InventoryRow]:
    """One row per registered agent, in agent id order."""
    rows = []
    for r in sorted(records, key=lambda r: r.agent_id):
        cls = classes.get(r.profile.agent_class)
        active = [k.added_at for k in r.keys
                  if k.status == "active" or (k.not_after is not None and k.not_after > now)]
        newest = max(active, default=None)
        m = r.profile.model
        rows.append(InventoryRow(
            agent_id=r.agent_id, owner=r.profile.owner, agent_class=r.profile.agent_class,
            model=f"{m.name} {m.version}" + (f" ({m.digest})" if m.digest else ""),
            status=r.status, baseline=cls.baseline if cls else (),
            grants=tuple(g for g in held.get(r.agent_id, []) if g.expires_at > now),
            last_acted=acted.get(r.agent_id), newest_key_at=newest,
            flags=_flags(r, cls is not None, newest, now, key_max_age) + lifecycle_flags(
                r, lifecycle or AgentLifecycle(), acted.get(r.agent_id), now)))
    return rows
