"""Worker side of usage budgets: audit each reported use, end a grant whose budget is used up.

Imports broker, schemas, streams.worker.

Resource services count uses atomically in Redis before they report them on the usage topic
(``broker.sdk.resource.budgets``). Here every report is audited, and a report of the last unit (or a
refusal at the limit) ends the grant: ``REVOKE_EXHAUSTED`` removes it once per exhaustion, only
if the store's own counter is at the limit (a forged report revokes nothing), then one
``grant.revoked`` with the reason is published and marked, so a redelivered report publishes
nothing again. Reports of the checks enforcement points answered (``checks.reported``) are
audited, one record per check. An undecodable report goes to the dead-letter topic.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from broker.adapters.redis.budgets import BudgetRevoker, Exhaustion
from broker.audit.checks import check_audits
from broker.delivery.routing import namespaces_of
from broker.errors import WireError
from broker.grants.budgets import revoked_for, use_audit
from broker.grants.revocation import lifecycle_audit
from schemas.events import ChecksReported, GrantUsed
from streams.worker import Incoming, WorkerContext, expect

log = logging.getLogger("permbroker.budgets")


class Budgets:
    """Applies usage reports: audit, and the revocation of exhausted grants (once)."""

    def __init__(self, ctx: WorkerContext, revoker: BudgetRevoker) -> None:
        self.ctx = ctx
        self._revoker = revoker
        # Sees each check report before it is audited (the usage detector; set by the
        # composition root): once a report's checks are audited, its detection is done.
        self.observe_checks: Callable[[ChecksReported], Awaitable[None]] | None = None

    async def on_usage(self, msg: Incoming) -> None:
        """Handle one report of the usage topic (retried until stored and published)."""
        await self.ctx.ready.wait()
        try:
            found = self.ctx.read(msg)
            if isinstance(found, ChecksReported):  # checks an enforcement point answered
                await self.ctx.retrying("usage", lambda: self._checks(found, msg))
                return
            event = expect(found, msg, GrantUsed)
        except WireError as exc:
            await self.ctx.dead_letter(msg, str(exc), exc.code)
            return
        await self.ctx.retrying("usage", lambda: self._apply(event, msg))

    async def _checks(self, report: ChecksReported, msg: Incoming) -> None:
        """Audit each reported check (resources hashed wherever they are quoted)."""
        if self.observe_checks is not None:
            await self.observe_checks(report)
        resources = tuple(sorted({c.resource for c in report.checks if c.resource}))
        await self.ctx.audit(*check_audits(report, msg.received_at), also=resources)
        self.ctx.count("check_reports")
        if report.dropped:
            self.ctx.count("check_reports_with_drops")

    async def _apply(self, event: GrantUsed, msg: Incoming) -> None:
        now = msg.received_at
        await self.ctx.audit(use_audit(event, "reported", now), also=(event.resource,))
        self.ctx.count(f"uses_{event.outcome}")
        if event.outcome == "consumed" and event.used < event.limit:
            return
        ended = await self._revoker.end(event, now, self.ctx.policy.max_grant_duration_s)
        if ended.status in ("unverified", "not-exhausted"):
            self.ctx.count("budget_reports_unverified")
            log.warning("use %s of %s reports an exhausted %s budget the store does not "
                        "confirm (%s); nothing revoked", event.use_id, event.grant_id,
                        event.scope, ended.status)
            return
        await self._publish(event, ended, now)

    async def _publish(self, event: GrantUsed, ended: Exhaustion, now: datetime) -> None:
        max_s = self.ctx.policy.max_grant_duration_s
        if ended.status == "existing" and await self._revoker.published(event):
            self.ctx.count("duplicates")
            return
        if ended.grant is not None:  # None: the grant had already ended before its budget did
            revoked = revoked_for(ended.grant, event, now)
            await self.ctx.emit_grants((revoked, namespaces_of(ended.grant.scopes)))
            await self.ctx.audit(lifecycle_audit(revoked, now))
            self.ctx.count("budget_revocations")
            log.warning("revoked grant %s of %s: %s", revoked.grant_id, revoked.agent_id,
                        revoked.reason)
        await self._revoker.mark_published(event, now, max_s)

