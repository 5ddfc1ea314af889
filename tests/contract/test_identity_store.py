"""The identity checks' Redis state on a real Redis: a nonce's first use is recorded once, with
when its agent acted, in the same step; a redelivery or a replay changes neither."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.identity import LAST_ACTED_LIFE, IdentityStore
from tests.support.services import Services

pytestmark = pytest.mark.integration
IDENTITY_DB = 6  # this module's own database
_NOW = datetime.now(UTC)
T0 = _NOW.replace(microsecond=_NOW.microsecond // 1000 * 1000)  # Redis keeps milliseconds


@pytest.fixture
async def store(services: Services) -> AsyncIterator[tuple[IdentityStore, redis.Redis]]:
    """The store on a flushed database of its own, and a plain client to look inside."""
    url = urlunsplit(urlsplit(services.redis_url)._replace(path=f"/{IDENTITY_DB}"))
    plain = redis.Redis.from_url(url)
    plain.flushdb()
    real = IdentityStore.from_url(url)
    try:
        yield real, plain
    finally:
        await real.aclose()
        plain.close()


async def test_a_first_use_records_its_origin_and_when_its_agent_acted(
    store: tuple[IdentityStore, redis.Redis],
) -> None:
    """The first use: its origin and when the agent acted (the hash living 30 days past it);
    the nonce expires when the signature could no longer be accepted."""
    ids, plain = store
    until = T0 + timedelta(minutes=5)
    assert await ids.first_seen("agent-a", "jti-1", "esc/0/7", until, agent="agent-a",
                                at=T0) == ("esc/0/7", True)
    assert await ids.last_acted() == {"agent-a": T0}
    assert plain.pexpiretime(keys.nonce("agent-a", "jti-1")) == int(until.timestamp() * 1000)
    assert plain.pexpiretime(keys.LAST_ACTED) == int((T0 + LAST_ACTED_LIFE).timestamp() * 1000)


async def test_a_redelivery_or_a_replay_records_nothing_new(
    store: tuple[IdentityStore, redis.Redis],
) -> None:
    """The same origin again is a redelivery, another origin a replay: both answer the first
    origin, and neither moves when the agent last acted."""
    ids, _plain = store
    until = T0 + timedelta(minutes=5)
    await ids.first_seen("agent-a", "jti-1", "esc/0/7", until, agent="agent-a", at=T0)
    later = T0 + timedelta(minutes=1)
    assert await ids.first_seen("agent-a", "jti-1", "esc/0/7", until, agent="agent-a",
                                at=later) == ("esc/0/7", False)
    assert await ids.first_seen("agent-a", "jti-1", "esc/3/9", until, agent="agent-a",
                                at=later) == ("esc/0/7", False)
    assert await ids.last_acted() == {"agent-a": T0}


async def test_a_nonce_of_no_agent_leaves_the_last_acted_hash_alone(
    store: tuple[IdentityStore, redis.Redis],
) -> None:
    """An operator's or a service's nonce records its origin only."""
    ids, plain = store
    assert await ids.first_seen("op-1", "jti-2", "risk/1/2", T0 + timedelta(minutes=5)) == \
        ("risk/1/2", True)
    assert await ids.last_acted() == {} and not plain.exists(keys.LAST_ACTED)
