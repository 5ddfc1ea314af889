"""Risk signals about an agent or a resource.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from schemas.events.base import AgentId, EventId, Resource, Unit, UtcDatetime, WireModel

# A risk signal of this kind revokes every grant of its subject, whatever the policy says.
OPERATOR_REVOKE_KIND = "operator.revoke"

EvidenceKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
EvidenceText = Annotated[str, StringConstraints(max_length=256)]


class RiskObserved(WireModel):
    """A risk signal about an agent and/or a resource."""

    signal_id: EventId
    subject_agent_id: AgentId | None = None
    resource: Resource | None = None
    kind: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}$")]
    severity: Unit
    source: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    detail: Annotated[str, StringConstraints(max_length=2000)] = ""
    observed_at: UtcDatetime
    # Structured evidence (behaviour detectors set it): name -> number or short text, readable
    # by revocation rules as ``signal.evidence.<name>``. Optional: older signals carry none.
    evidence: dict[EvidenceKey, float | EvidenceText] = Field(default_factory=dict,
                                                                max_length=32)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.signal_id
