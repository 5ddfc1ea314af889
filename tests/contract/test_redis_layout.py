"""The grant store's layout on a real Redis. A grant is kept as the JSON of its fields that differ
from their defaults, and reads back whole. The expiry index holds each grant once, scored by its
warning time until its warning went out and by its expiry after; a renewal before the warning
moves it; an ended grant's entry is moot; warning shards of stores written by earlier versions
are still read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.adapters.redis.store import RedisGrantStore
from schemas.events import GrantIssued
from tests.support.factories import AGENT, MARGIN_S, built, commit, outcome, revocation
from tests.support.services import Services
from tests.support.twins import ms

pytestmark = pytest.mark.integration
LAYOUT_DB = 7  # this module's own database
MS = timedelta(milliseconds=1)
Stores = tuple[RedisGrantStore, LifecycleStore, redis.Redis]


@pytest.fixture
async def stores(services: Services) -> AsyncIterator[Stores]:
    """The grant store and its lifecycle side on a flushed database, and a plain client."""
    url = urlunsplit(urlsplit(services.redis_url)._replace(path=f"/{LAYOUT_DB}"))
    plain = redis.Redis.from_url(url)
    plain.flushdb()
    store = RedisGrantStore.from_url(url, margin_s=MARGIN_S)
    try:
        yield store, LifecycleStore(store, margin_s=MARGIN_S), plain
    finally:
        await store.aclose()
        plain.close()


async def _granted(store: RedisGrantStore) -> tuple[GrantIssued, datetime]:
    now = await built(store)
    granted = outcome(now)
    await commit(store, granted, now)
    assert granted.grant is not None
    return granted.grant, now


def _entries(plain: redis.Redis, indexes: list[str]) -> dict[str, int]:
    """Every member of the given shards and its score."""
    found = [pair for index in indexes for pair in
             cast(list[tuple[bytes, float]], plain.zrange(index, 0, -1, withscores=True))]
    return {member.decode(): int(score) for member, score in found}


async def test_a_grant_is_kept_without_its_default_fields_and_reads_back_whole(
    stores: Stores,
) -> None:
    """No budgets, case, delegation or tenant of its own: none of those fields is stored, and
    the grant the store reads back equals the one it was given."""
    store, _life, plain = stores
    grant, now = await _granted(store)
    raw = plain.get(keys.grant(AGENT, grant.grant_id))
    assert isinstance(raw, bytes)
    kept = json.loads(raw)
    assert {"budgets", "case_id", "parent_grant_id", "delegators", "tenant"}.isdisjoint(kept)
    assert {"grant_id", "scopes", "resources", "expires_at"} <= set(kept)
    assert await store.active_grants(AGENT, now) == [grant]


async def test_a_grant_is_indexed_once_then_warned_then_expired(stores: Stores) -> None:
    """One entry per grant, at its warning time; warned once, it moves to its expiry; its
    expiry is not due before then, and is live at it; acknowledged, nothing is left."""
    store, life, plain = stores
    grant, _now = await _granted(store)
    warn = store.warn_at(grant)
    member = keys.expiry_member(AGENT, grant.grant_id, grant.scopes)
    assert _entries(plain, keys.expiry_indexes()) == {member: ms(warn)}
    assert await life.due_warnings(warn - MS) == []
    due = await life.due_warnings(warn)
    assert [(d.event.grant_id, ms(d.event.expires_at)) for d in due if d.event] == [
        (grant.grant_id, ms(grant.expires_at))]
    assert await store.due_expiries(warn) == [], "its warning pending: not an expiry"
    await life.ack_warnings(due)
    assert _entries(plain, keys.expiry_indexes()) == {member: ms(grant.expires_at)}
    assert await life.due_warnings(grant.expires_at) == [], "warned once"
    assert await store.due_expiries(grant.expires_at - MS) == []
    expired = await store.due_expiries(grant.expires_at)
    assert [(d.event.grant_id, d.live, ms(d.event.expires_at)) for d in expired] == [
        (grant.grant_id, True, ms(grant.expires_at))]
    await store.ack_expiries(expired)
    assert _entries(plain, keys.expiry_indexes()) == {}
    assert plain.exists(keys.life(AGENT, grant.grant_id)) == 0


async def test_a_grant_renewed_before_its_warning_is_warned_before_its_new_expiry(
    stores: Stores,
) -> None:
    """Renewed (a later expiry in its life key and record), the entry is re-scored to the new
    warning time, and the warning then names the new expiry."""
    store, life, plain = stores
    grant, _now = await _granted(store)
    renewed = grant.model_copy(update={"expires_at": grant.expires_at + timedelta(minutes=10)})
    plain.set(keys.grant(AGENT, grant.grant_id), renewed.model_dump_json(),
              pxat=ms(renewed.expires_at))
    plain.set(keys.life(AGENT, grant.grant_id), ms(renewed.expires_at),
              pxat=ms(renewed.expires_at) + MARGIN_S * 1000)
    assert await life.due_warnings(store.warn_at(grant)) == []
    member = keys.expiry_member(AGENT, grant.grant_id, grant.scopes)
    assert _entries(plain, keys.expiry_indexes()) == {member: ms(store.warn_at(renewed))}
    due = await life.due_warnings(store.warn_at(renewed))
    assert [ms(d.event.expires_at) for d in due if d.event] == [ms(renewed.expires_at)]


async def test_an_ended_grant_gets_no_warning_and_its_entry_is_dropped(stores: Stores) -> None:
    """Revoked before its warning: no warning; its entry is due, not live, and then gone."""
    store, life, plain = stores
    grant, now = await _granted(store)
    await store.revoke_all(revocation(now + timedelta(seconds=1)))
    warn = store.warn_at(grant)
    assert await life.due_warnings(warn) == []
    due = await store.due_expiries(warn)
    assert [(d.event.grant_id, d.live) for d in due] == [(grant.grant_id, False)]
    await store.ack_expiries(due)
    assert _entries(plain, keys.expiry_indexes()) == {}


async def test_a_warning_left_in_an_earlier_versions_warning_shard_still_goes_out_once(
    stores: Stores,
) -> None:
    """A store written with separate warning shards: the entry there is warned and removed; the
    expiry entry (scored at the expiry, as that layout scored it) is announced at the expiry."""
    store, life, plain = stores
    grant, _now = await _granted(store)
    member = keys.expiry_member(AGENT, grant.grant_id, grant.scopes)
    warn = store.warn_at(grant)
    plain.zadd(keys.expiry_index(AGENT), {member: ms(grant.expires_at)})
    plain.zadd(keys.legacy_warning_index(AGENT), {member: ms(warn)})
    due = await life.due_warnings(warn)
    assert [(d.event.grant_id, ms(d.event.expires_at)) for d in due if d.event] == [
        (grant.grant_id, ms(grant.expires_at))]
    await life.ack_warnings(due)
    assert _entries(plain, keys.legacy_warning_indexes()) == {}
    assert await life.due_warnings(grant.expires_at) == []
    expired = await store.due_expiries(grant.expires_at)
    assert [(d.event.grant_id, d.live) for d in expired] == [(grant.grant_id, True)]
