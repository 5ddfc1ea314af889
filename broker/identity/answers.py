"""Events the identity checks and commands produce (pure): answers and audit records.

Imports schemas, broker.grants (ids) and broker.identity. Ids derive from the input (the command
id, or the Kafka origin of a rejected message), so a redelivery produces the very same ids.
Audit inputs never carry a token, an enrollment token or key material: only ids and kids.
"""

from __future__ import annotations

from datetime import datetime

from broker.grants.decide import derive_id
from broker.identity.rules import Principal, Rejection
from schemas.events import AgentCommand, AuditRecord, CommandAnswered, GrantCommand

Command = AgentCommand | GrantCommand


def answer(cmd: Command, at: datetime, *, refusal: Rejection | None = None, reason: str = "",
           **fields: object) -> CommandAnswered:
    """The answer to one command: done (with ``reason``), or refused with the rejection."""
    agent = cmd.agent_id
    return CommandAnswered.model_validate({
        "answer_id": derive_id("answer", cmd.command_id, agent or ""),
        "command_id": cmd.command_id, "agent_id": agent, "action": cmd.action,
        "outcome": "refused" if refusal else "done",
        "reason": refusal.detail if refusal else reason,
        "rule": refusal.rule if refusal else "", "answered_at": at, **fields})


def rejection_audit(origin: str, at: datetime, why: Rejection, *, agent_id: str | None,
                    subject_id: str, ce_type: str | None, kid: str | None,
                    signer: Principal | None) -> AuditRecord:
    """The audit record of a refused event or command, with the identity that sent it."""
    return AuditRecord(
        audit_id=derive_id("audit-rejected", origin, agent_id or ""),
        kind="identity.rejected", agent_id=agent_id, occurred_at=at, subject_id=subject_id,
        outcome="denied", reasons=(why.detail,), rules=(why.rule,),
        inputs={"origin": origin, "code": why.code.value, "ce_type": ce_type, "kid": kid,
                "signer": signer.id if signer is not None else None})


def command_audit(cmd: Command, at: datetime, *, signer: Principal, kind: str, reason: str,
                  origin: str, **inputs: object) -> AuditRecord:
    """The audit record of a command the broker carried out."""
    shown = cmd.model_dump(mode="json", exclude={"enrollment", "reply_key"})
    return AuditRecord(
        audit_id=derive_id("audit-command", cmd.command_id, cmd.agent_id or ""),
        kind=kind, agent_id=cmd.agent_id, occurred_at=at, subject_id=cmd.command_id,
        outcome="done", reasons=(reason,),
        inputs={"command": shown, "signer": signer.id, "kid": signer.kid, "origin": origin,
                **inputs})
