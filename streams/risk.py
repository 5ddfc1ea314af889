"""Risk signals and revocations in the worker. Imports broker, schemas, streams.worker.

A risk signal is verified by the identity gate, then judged by the policy's revocation rules
(an operator's revoke signal revokes outright): a revoking signal removes every grant of its
agent and leaves markers (a revocation is never undone), publishes ``grant.revoked`` per grant
and one ``agent.revoked``, and audits each; a non-revoking one is remembered as live risk for
``RISK_WINDOW``. A signal that cannot be read may be a revocation: when it is validly signed (or
identity is off), its key's agent is revoked (fail closed). Registry commands revoke through
``revoke_agent``. A signal that cannot be handled stops the worker (streams/app.py), so the
partition halts instead of skipping a revocation.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from broker.adapters.ports import NO_RISK_FENCE, Fence
from broker.delivery.consistency import ConsistencyToken
from broker.delivery.routing import namespaces_of
from broker.errors import Fenced, WireError
from broker.grants.decide import derive_id
from broker.grants.revocation import (
    LIVE_RISK,
    OPERATOR_REVOKE_RULE,
    lifecycle_audit,
    plan_revocation,
    revoked_events,
    risk_audit,
)
from broker.policy import RiskAction
from schemas.events import AGENT_ID_PATTERN, OPERATOR_REVOKE_KIND, AuditRecord, RiskObserved
from streams.telemetry.figures import lap
from streams.worker import Gate, Incoming, WorkerContext

log = logging.getLogger("permbroker.worker")
RISK_WINDOW = LIVE_RISK


class Risk:
    """Applies the risk topic's signals: revocations, live risk, fail-safe revocations."""

    def __init__(self, ctx: WorkerContext, gate: Gate) -> None:
        self.ctx = ctx
        self.gate = gate

    async def on_risk(self, msg: Incoming) -> None:
        """Apply revocation rules to one risk signal; a bad signal revokes its key's agent."""
        ctx = self.ctx
        await ctx.ready.wait()
        try:
            await ctx.fence(msg)
            try:
                signal = ctx.decode(msg, RiskObserved)
            except WireError as exc:
                await ctx.dead_letter(msg, str(exc), exc.code)
                if await self._may_fail_safe(msg):
                    await self._fail_safe_revoke(msg, str(exc))
                return
            admission = await ctx.retrying("identity", lambda: self.gate.admit(msg, signal))
            lap("verified")
            if admission is None:
                return
            signer = admission.signer.id if admission.signer is not None else None
            await ctx.retrying("risk", lambda: self._risk(signal, msg, signer))
        except Fenced as exc:
            ctx.fenced(msg, str(exc))

    async def fail_safe(self, msg: Incoming, reason: str) -> None:
        """A signal whose handling failed for good: revoke the agent its key names, if the
        signal is validly signed by that agent or an operator (streams/guard.py retries this)."""
        if await self._may_fail_safe(msg):
            await self._fail_safe_revoke(msg, reason)

    async def revoke_agent(
        self, agent_id: str, cause_id: str, action: RiskAction, now: datetime
    ) -> tuple[str, ...]:
        """Revoke every grant of an agent (registry suspensions, key revocations, model changes)."""
        revoked, _token, audits = await self._revoke(agent_id, cause_id, action, now,
                                                     NO_RISK_FENCE)
        await self.ctx.audit(*audits)
        return revoked

    async def _may_fail_safe(self, msg: Incoming) -> bool:
        """Only a validly signed unreadable signal revokes (no forged denial of service)."""
        agent_id = (msg.key or b"").decode(errors="replace")
        return await self.ctx.retrying(
            "identity", lambda: self.gate.authentic_for(msg, agent_id)
        )

    async def _risk(self, signal: RiskObserved, msg: Incoming, signer: str | None) -> None:
        """Apply one admitted signal; ``signer`` is the verified principal that signed it."""
        ctx = self.ctx
        now = msg.received_at
        subject = signal.subject_agent_id
        agent = self.gate.profile(subject) if subject else None
        action = (
            RiskAction(  # named by the key that signed it, never by what the signal says
                revoke=True,
                rule=OPERATOR_REVOKE_RULE,
                reason=f"revoked by {signer or signal.source}: "
                f"{signal.detail or 'no reason given'}",
            )
            if signal.kind == OPERATOR_REVOKE_KIND
            else ctx.policy_for(agent).on_risk(signal, agent, now)
        )
        revoked: tuple[str, ...] = ()
        token: ConsistencyToken | None = None
        noted_until: datetime | None = None
        ended: tuple[AuditRecord, ...] = ()
        hide = ctx.sensitive({"signal": signal.model_dump(mode="json")})
        if action.revoke and subject:  # the revocation script checks the partition's claim
            revoked, token, ended = await self._revoke(subject, signal.signal_id, action, now,
                                                       await ctx.fence(msg), msg)
        else:
            await ctx.partition_fence(msg)  # a stale owner of the partition notes nothing
            if subject:
                noted_until = now + RISK_WINDOW
                await ctx.store.note_risk(subject, signal.severity, noted_until)
        audit = risk_audit(signal, action, revoked, now, signed_by=signer,
                           noted_until=noted_until)
        if token is not None:  # where the revocation landed: `allows(..., at_least=token)`
            audit = audit.model_copy(
                update={"inputs": {**audit.inputs, "consistency_token": token.encode()}}
            )
        await ctx.audit(*ended, audit, also=hide)  # the grants' ends and the signal's: one write
        lap("audited")

    async def _revoke(
        self,
        agent_id: str,
        cause_id: str,
        action: RiskAction,
        now: datetime,
        fence: Fence,
        msg: Incoming | None = None,
    ) -> tuple[tuple[str, ...], ConsistencyToken | None, tuple[AuditRecord, ...]]:
        """Revoke and announce; the revoked grant ids, where their ends landed, and the audit
        records of those ends, for the caller to write (with its own, in one go).

        Fenced when a newer owner claimed ``msg``'s partition or wrote for the agent; a claim
        this worker made again since ``fence`` was taken (after a Redis wipe) is its own, so
        the revocation goes ahead with the new fence.
        """
        ctx = self.ctx
        plan = plan_revocation(
            cause_id,
            agent_id,
            action,
            now=now,
            max_grant_s=ctx.policy.max_grant_duration_s,
            margin_s=ctx.margin_s,
        )
        grants = await ctx.store.revoke_all(plan, fence)
        if grants is None and msg is not None and (again := await ctx.fence(msg)) != fence:
            grants = await ctx.store.revoke_all(plan, again)
        lap("revoked")
        if grants is None:
            raise Fenced(f"revocation of {agent_id}: a newer owner wrote for this agent")
        agent_event, per_grant = revoked_events(plan, grants)
        spaces = {g.grant_id: namespaces_of(g.scopes) for g in grants}
        token = await ctx.emit_grants(
            *((e, spaces.get(e.grant_id)) for e in per_grant), (agent_event, None)
        )
        lap("published")
        ctx.count("revocations")
        log.warning(
            "revoked %d grant(s) of %s (rule %s, cause %s)",
            len(grants),
            agent_id,
            plan.rule,
            cause_id,
        )
        return (tuple(g.grant_id for g in grants), token,
                tuple(lifecycle_audit(e, now) for e in per_grant))

    async def _fail_safe_revoke(self, msg: Incoming, reason: str) -> None:
        """A risk signal we cannot read may be a revocation: revoke the agent its key names."""
        agent_id = (msg.key or b"").decode(errors="replace")
        if not re.fullmatch(AGENT_ID_PATTERN, agent_id):
            log.error(
                "undecodable risk signal at %s names no agent; dead-lettered only", msg.origin
            )
            return
        action = RiskAction(
            revoke=True,
            rule="undecodable-risk-signal",
            reason=f"a risk signal about this agent could not be read ({reason}); "
            "revoking to fail closed",
        )

        async def revoke() -> tuple[str, ...]:
            fence = await self.ctx.partition_fence(msg)
            cause = derive_id("undecodable", msg.origin, agent_id)
            revoked, _token, audits = await self._revoke(agent_id, cause, action,
                                                         msg.received_at, fence)
            await self.ctx.audit(*audits)
            return revoked

        await self.ctx.retrying("fail-safe revoke", revoke)
