"""Revocation by selector, the pure part: which agents and grants a selector names. Imports schemas.

A selector names agents by any of: agent id, agent class, model version, tenant, owner, labels
(all given criteria must hold), and/or a case id (agents holding a live grant issued for that
case). The same function plans the dry run and the real run, so both name the same set; no
criterion at all selects nothing (revoking everyone takes an explicit list, not an empty one).
An operator names one grant by its whole id or a prefix of exactly one id (``resolve_grant``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.events import AgentProfile, GrantIssued


@dataclass(frozen=True)
class Selector:
    """What to revoke; every criterion given must hold."""

    agent_id: str | None = None
    agent_class: str | None = None
    model_version: str | None = None
    tenant: str | None = None
    owner: str | None = None
    case_id: str | None = None
    labels: tuple[tuple[str, str], ...] = field(default=())

    def criteria(self) -> dict[str, Any]:
        """The criteria given (for audit records, reasons and JSON)."""
        given = {k: getattr(self, k) for k in ("agent_id", "agent_class", "model_version",
                                                "tenant", "owner", "case_id")}
        out: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        if self.labels:
            out["labels"] = dict(self.labels)
        return out

    def describe(self) -> str:
        """'model_version=3.2, labels={team: fraud}'."""
        return ", ".join(f"{k}={v}" for k, v in self.criteria().items()) or "(nothing)"

    def profile_matches(self, profile: AgentProfile) -> bool:
        """The profile criteria (all but the case id) hold for ``profile``."""
        wanted = (
            (self.agent_id, profile.agent_id), (self.agent_class, profile.agent_class),
            (self.model_version, profile.model.version), (self.tenant, profile.tenant),
            (self.owner, profile.owner),
        )
        if any(want is not None and want != have for want, have in wanted):
            return False
        return all(profile.labels.get(k) == v for k, v in self.labels)

    @property
    def needs_profile(self) -> bool:
        """Whether any criterion reads the agent's profile."""
        return any(k != "case_id" for k in self.criteria())


def parse_labels(items: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """'team=fraud' items as (key, value) pairs; ValueError names a malformed one."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"label {item!r} must be key=value")
        out.append((key, value))
    return tuple(out)


@dataclass(frozen=True)
class Target:
    """One agent a selector names and the live grants it holds (all revoked with it)."""

    agent_id: str
    profile: AgentProfile | None
    grants: tuple[GrantIssued, ...]


@dataclass(frozen=True)
class Selection:
    """The agents and grants one selector names at one time."""

    selector: Selector
    targets: tuple[Target, ...]
    at: datetime

    @property
    def grant_ids(self) -> tuple[str, ...]:
        """Every live grant the selection would revoke, sorted."""
        return tuple(sorted(g.grant_id for t in self.targets for g in t.grants))

    def as_json(self) -> dict[str, Any]:
        """The dry run's listing: agents, and each grant with its absolute expiry and time left."""
        return {
            "selector": self.selector.criteria(), "at": self.at.isoformat(),
            "agents": [_target_json(t, self.at) for t in self.targets],
            "grant_ids": list(self.grant_ids),
        }


def _target_json(t: Target, now: datetime) -> dict[str, Any]:
    p = t.profile
    return {
        "agent_id": t.agent_id,
        "agent_class": p.agent_class if p else None,
        "model_version": p.model.version if p else None,
        "tenant": p.tenant if p else None, "owner": p.owner if p else None,
        "labels": dict(p.labels) if p else {},
        "grants": [{"grant_id": g.grant_id, "scopes": list(g.scopes),
                    "expires_at": g.expires_at.isoformat(),
                    "remaining_s": round((g.expires_at - now).total_seconds(), 1),
                    "case_id": g.case_id} for g in sorted(t.grants, key=lambda g: g.expires_at)],
    }


def select(selector: Selector, profiles: Iterable[AgentProfile],
           grants: Mapping[str, Iterable[GrantIssued]], now: datetime) -> Selection:
    """The agents ``selector`` names among ``profiles`` (and holders of ``grants``) at ``now``.

    ``grants`` maps agent ids to their grants; only those still live at ``now`` are listed.
    """
    if not selector.criteria():
        return Selection(selector, (), now)
    by_id = {p.agent_id: p for p in profiles}
    live = {a: tuple(g for g in gs if g.expires_at > now) for a, gs in grants.items()}
    candidates = set(by_id) | (set(live) if not selector.needs_profile else set())
    targets = []
    for agent in sorted(candidates):
        profile = by_id.get(agent)
        if selector.needs_profile and (profile is None or not selector.profile_matches(profile)):
            continue
        held = live.get(agent, ())
        if selector.case_id is not None and not any(g.case_id == selector.case_id for g in held):
            continue
        targets.append(Target(agent, profile, held))
    return Selection(selector, tuple(targets), now)


def resolve_grant(ref: str, grants: Iterable[GrantIssued]
                  ) -> tuple[GrantIssued | None, tuple[str, ...]]:
    """The grant ``ref`` names: its whole id, or the start of exactly one grant id.

    Returns ``(grant, ())`` when it names one; ``(None, candidates)`` (the ids it starts,
    sorted) when it names several; ``(None, ())`` when it names none. An empty ``ref`` names
    nothing. A whole id wins even when it also starts a longer id.
    """
    if not ref:
        return None, ()
    found = {g.grant_id: g for g in grants if g.grant_id.startswith(ref)}
    if ref in found:
        return found[ref], ()
    if len(found) == 1:
        return next(iter(found.values())), ()
    return None, tuple(sorted(found))
