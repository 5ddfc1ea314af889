"""Faust wiring of approvals: the approvals topic agent and the window sweep. Imports faust, broker.

Kept apart from streams/app.py so that file only gains one line.
"""

from __future__ import annotations

from typing import Any

import faust

from broker.adapters.redis.approvals import ApprovalStore
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from broker.errors import BusError, StoreError
from schemas import topics
from streams.approvals import Approvals, log
from streams.processor import Incoming, Processor


def _incoming(event: Any) -> Incoming:
    m = event.message
    headers = m.headers or []
    items = list(headers.items()) if isinstance(headers, dict) else list(headers)
    return Incoming(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value, items)


def install(app: faust.App, processor: Processor, store: RedisGrantStore,
            settings: Settings) -> Approvals:
    """Hold approval requests, count votes from the approvals topic, close expired windows."""
    approvals = Approvals(processor, ApprovalStore(store.client, margin_s=settings.record_margin_s))
    processor.approvals = approvals
    votes = app.topic(topics.APPROVALS.name, value_type=bytes, key_type=bytes)

    @app.agent(votes, name="approvals", isolated_partitions=True)
    async def on_vote(stream: Any) -> None:
        async for event in stream.events():
            await approvals.on_vote(_incoming(event))

    @app.timer(max(settings.expiry_interval_s, 0.2))  # type: ignore[untyped-decorator]
    async def approval_windows() -> None:
        try:
            await approvals.sweep()
        except (StoreError, BusError) as exc:
            log.warning("approval window sweep failed, will retry: %s", exc)

    return approvals
