"""Audit records and their place in a partition's hash chain.

Imports pydantic, the stdlib and the other modules of schemas.events.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from schemas.events.base import AgentId, EventId, UtcDatetime, WireModel


class AuditLink(WireModel):
    """Where a sealed audit entry sits in its partition's hash chain.

    ``hash`` is sha256 over the canonical JSON of the whole entry with ``chain.hash`` left out,
    so it covers ``seq`` and ``prev_hash`` too; the first entry of a partition has seq 0 and
    ``prev_hash`` = 64 zeros. ``raw_offset`` is the offset of the entry on the raw audit topic
    (-1 for entries the sealer writes itself, such as digests).
    """

    partition: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=0)]
    prev_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    raw_offset: Annotated[int, Field(ge=-1)]
    sealed_at: UtcDatetime


class AuditRecord(WireModel):
    """What happened, what produced it, and the inputs needed to reproduce it.

    Workers write records without ``chain`` to the raw audit topic; the sealer copies each one
    to the audit topic with ``chain`` set, and every so often appends a record of kind
    ``audit.digest`` whose ``inputs`` hold an Ed25519 signature over the chain so far
    (``first_seq``, ``records``, ``key_id``, ``algorithm``, ``signature``; see
    ``broker.audit.chain``). Sensitive values are stored as ``hmac-sha256:<hex>``.
    """

    audit_id: EventId
    kind: str
    agent_id: AgentId | None
    occurred_at: UtcDatetime
    subject_id: str
    outcome: str
    reasons: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    policy_revision: str = ""
    inputs: dict[str, object] = Field(default_factory=dict)
    chain: AuditLink | None = None

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on."""
        return self.audit_id


class WithheldLink(WireModel):
    """The chain link of an entry withheld from a tenant's copy of the audit: where it sits and
    its hash, nothing of its content."""

    partition: Annotated[int, Field(ge=0)]
    seq: Annotated[int, Field(ge=0)]
    prev_hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    hash: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class AuditWithheld(WireModel):
    """An audit entry about another tenant's agent (or about no agent) in a tenant's copy of
    the audit (``permbroker.tenant.<tenant>.audit``): its chain link only. Its successor's
    ``prev_hash`` and the signed digests after it still bind it, so the copy verifies as a
    chain while showing nothing of the entry, its agent included."""

    withheld: Literal[True] = True
    chain: WithheldLink

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on: the entry's place in its chain."""
        return f"withheld:{self.chain.partition}:{self.chain.seq}"

