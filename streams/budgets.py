"""Worker side of usage budgets: audit each reported use, end a grant whose budget is used up.

Imports faust, broker, schemas, streams.processor.

Resource services count uses atomically in Redis before they report them on the usage topic
(``broker.sdk.budgets``). Here every report is audited, and a report of the last unit (or a
refusal at the limit) ends the grant: ``REVOKE_EXHAUSTED`` removes it once per exhaustion, only
if the store's own counter is at the limit (a forged report revokes nothing), then one
``grant.revoked`` with the reason is published and marked, so a redelivered report publishes
nothing again. An undecodable report goes to the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from broker.adapters.kafka.admin import ensure_topics
from broker.adapters.redis.budgets import BudgetRevoker, Exhaustion
from broker.config import Settings
from broker.delivery.routing import namespaces_of
from broker.errors import BusError, WireError
from broker.grants.budgets import revoked_for, use_audit
from broker.grants.decide import lifecycle_audit
from schemas import topics
from schemas.events import GrantUsed
from streams.processor import Incoming, Processor

log = logging.getLogger("permbroker.budgets")


class Budgets:
    """Applies usage reports: audit, and the revocation of exhausted grants (once)."""

    def __init__(self, processor: Processor, revoker: BudgetRevoker) -> None:
        self._p = processor
        self._revoker = revoker

    async def on_usage(self, msg: Incoming) -> None:
        """Handle one report of the usage topic (retried until stored and published)."""
        await self._p.ready.wait()
        try:
            event = self._p._decode(msg, GrantUsed)
        except WireError as exc:
            await self._p.dead_letter(msg, str(exc))
            return
        await self._p._retrying("usage", lambda: self._apply(event, msg))

    async def _apply(self, event: GrantUsed, msg: Incoming) -> None:
        now = msg.received_at
        await self._p.audit(use_audit(event, "reported", now), also=(event.resource,))
        self._p._count(f"uses_{event.outcome}")
        if event.outcome == "consumed" and event.used < event.limit:
            return
        ended = await self._revoker.end(event, now, self._p.policy.max_grant_duration_s)
        if ended.status in ("unverified", "not-exhausted"):
            self._p._count("budget_reports_unverified")
            log.warning("use %s of %s reports an exhausted %s budget the store does not "
                        "confirm (%s); nothing revoked", event.use_id, event.grant_id,
                        event.scope, ended.status)
            return
        await self._publish(event, ended, now)

    async def _publish(self, event: GrantUsed, ended: Exhaustion, now: Any) -> None:
        max_s = self._p.policy.max_grant_duration_s
        if ended.status == "existing" and await self._revoker.published(event):
            self._p._count("duplicates")
            return
        if ended.grant is not None:  # None: the grant had already ended before its budget did
            revoked = revoked_for(ended.grant, event, now)
            await self._p.emit_grants((revoked, namespaces_of(ended.grant.scopes)))
            await self._p.audit(lifecycle_audit(revoked, now))
            self._p._count("budget_revocations")
            log.warning("revoked grant %s of %s: %s", revoked.grant_id, revoked.agent_id,
                        revoked.reason)
        await self._revoker.mark_published(event, now, max_s)


def _incoming(event: Any) -> Incoming:
    m = event.message
    headers = m.headers or []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, items)


def install(app: faust.App, processor: Processor, settings: Settings) -> Budgets:
    """Add the usage agent (and make sure its topic exists)."""
    budgets = Budgets(processor, BudgetRevoker(processor.store.client,
                                               margin_s=settings.record_margin_s))
    usage = app.topic(topics.USAGE.name, value_type=bytes, key_type=bytes)

    @app.task  # type: ignore[untyped-decorator]
    async def prepare_usage() -> None:
        try:
            await asyncio.to_thread(ensure_topics, settings.kafka_bootstrap, [topics.USAGE])
        except BusError as exc:
            log.error("could not create %s: %s", topics.USAGE.name, exc)

    @app.agent(usage, name="usage", isolated_partitions=True)
    async def on_usage(stream: Any) -> None:
        async for event in stream.events():
            await budgets.on_usage(_incoming(event))

    return budgets
