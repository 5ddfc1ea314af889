"""Live risk in the Redis store when a worker catches up on old risk signals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.store import RedisGrantStore
from broker.config import Settings
from tests.support.services import unique

pytestmark = pytest.mark.integration


async def test_a_risk_window_already_past_leaves_no_live_risk(
    settings: Settings, rclient: redis.Redis
) -> None:
    """A signal read after its 10-minute window (a worker catching up) notes nothing, no crash."""
    store, agent = RedisGrantStore.from_url(settings.redis_url), unique("risky")
    try:
        assert await store.note_risk(agent, 0.75, datetime.now(UTC) - timedelta(minutes=1)) == 0.0
        assert rclient.exists(keys.risk(agent)) == 0
        assert await store.note_risk(agent, 0.75, datetime.now(UTC) + timedelta(minutes=1)) == 0.75
        assert await store.live_risk(agent) == 0.75
    finally:
        await store.aclose()
