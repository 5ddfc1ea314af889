"""The baseline entitlements a view holds: agent -> the broker's latest statement. Imports schemas.

Written by the view's consumer thread, read by any: each agent's entry is replaced whole (one
dict store), never changed in place, so a check takes no lock. A statement with an older
registry revision than the one held changes nothing (a worker that re-announces from a registry
view a moment behind cannot undo a suspension). A revocation of the agent that quarantines it
withdraws the baseline until the quarantine ends, and a lapsing registration ends it (``until``),
both judged at check time like a grant's expiry.
"""

from __future__ import annotations

from schemas.events import AgentRevoked, BaselineEntitlement


class BaselineIndex:
    """Standing baselines by agent, and the quarantines that suspend them."""

    def __init__(self) -> None:
        self._held: dict[str, tuple[frozenset[str], BaselineEntitlement]] = {}
        self._quarantined: dict[str, AgentRevoked] = {}

    def apply(self, event: BaselineEntitlement) -> None:
        """Hold ``event`` as the agent's baseline unless a newer registry revision is held."""
        held = self._held.get(event.agent_id)
        if held is not None and event.registry_revision < held[1].registry_revision:
            return
        self._held[event.agent_id] = (frozenset(event.scopes), event)

    def revoked(self, event: AgentRevoked) -> None:
        """Remember the latest-ending quarantine a revocation of the agent imposes."""
        until = event.quarantined_until
        held = self._quarantined.get(event.agent_id)
        if until is not None and (held is None or held.quarantined_until is None
                                  or until > held.quarantined_until):
            self._quarantined[event.agent_id] = event

    def entitled(self, agent_id: str, scope: str, t: float) -> tuple[bool, str,
                                                                     BaselineEntitlement | None]:
        """(allowed, why not, the statement) for ``scope`` at epoch ``t``; any resource."""
        held = self._held.get(agent_id)
        if held is None or scope not in held[0]:
            if held is not None and held[1].status == "withdrawn":
                return False, f"baseline of {agent_id} withdrawn: {held[1].reason}", None
            return False, "", None
        ends = held[1].until
        if ends is not None and t >= ends.timestamp():
            return False, (f"baseline of {agent_id} ended at {ends.isoformat()}: its "
                           "registration lapsed (renew it)"), None
        quarantine = self._quarantined.get(agent_id)
        until = quarantine.quarantined_until if quarantine is not None else None
        if quarantine is not None and until is not None and t < until.timestamp():
            return False, (f"baseline of {agent_id} withdrawn while it is quarantined until "
                           f"{until.isoformat()} (rule {quarantine.rule})"), None
        return True, "", held[1]

    def statement(self, agent_id: str) -> BaselineEntitlement | None:
        """The latest statement applied for the agent, if any."""
        held = self._held.get(agent_id)
        return held[1] if held is not None else None
