"""A revoked agent's window of exposure at a resource view. Imports broker, schemas.

``Exposure`` makes every check of one agent at a ``GrantView`` and remembers when the agent was
last allowed and which checks began after the view had applied its revocation (the view's
``on_event`` callback runs right after the index applied a record, so a check that starts after
it saw the ``agent.revoked`` record reads a view whose offset is at or past the revocation's).
"""

from __future__ import annotations

import time

from broker.adapters.kafka.bus import Record
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.view import GrantView
from schemas.events import AgentRevoked


class Exposure:
    """Every check of one agent at one view, from the moment its revocation was sent."""

    def __init__(self, agent_id: str, scope: str, resource: str) -> None:
        self.agent_id, self.scope, self.resource = agent_id, scope, resource
        self.sent_at: float | None = None  # monotonic: the revocation was acknowledged by Kafka
        self.applied_at: float | None = None  # monotonic: the view applied agent.revoked
        self.last_allowed: float | None = None  # monotonic start of the last allowing check
        self.checks = 0
        self.after_applied = 0
        self.allowed_after_applied = 0

    def on_event(self, record: Record, _applied_at: float) -> None:
        """GrantView callback, in the view's thread, after the index applied ``record``."""
        event = record.event
        if isinstance(event, AgentRevoked) and event.agent_id == self.agent_id:
            self.applied_at = self.applied_at or time.monotonic()

    def sent(self) -> None:
        """The revocation signal was just acknowledged by Kafka."""
        self.sent_at = time.monotonic()

    def check(self, view: GrantView) -> Verdict:
        """One check of the agent, classified by what the view had applied when it began."""
        applied = self.applied_at is not None  # read before the check starts
        started = time.monotonic()
        verdict = view.allows(self.agent_id, self.scope, self.resource)
        self.checks += 1
        if verdict.allowed and self.sent_at is not None and started >= self.sent_at:
            self.last_allowed = started
        if applied:
            self.after_applied += 1
            self.allowed_after_applied += verdict.allowed
        return verdict

    def window_s(self) -> float:
        """How long after the revocation was sent the agent was still allowed (0: never)."""
        assert self.sent_at is not None, "the revocation was never sent"
        return 0.0 if self.last_allowed is None else self.last_allowed - self.sent_at
