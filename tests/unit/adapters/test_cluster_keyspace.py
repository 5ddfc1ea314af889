"""Redis Cluster key layout: every script's keys share one slot; clients follow the URL scheme."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import cluster_url
from broker.adapters.redis.store import _packed_markers
from broker.config import Settings


def test_every_slot_has_a_view_marker_in_that_slot() -> None:
    """The view is marked built once per slot: each marker hashes to its own slot, all differ."""
    markers = keys.view_markers()
    assert len(markers) == REDIS_CLUSTER_HASH_SLOTS
    assert [key_slot(m.encode()) for m in markers] == list(range(REDIS_CLUSTER_HASH_SLOTS))


def test_the_packed_marker_mset_is_what_redis_py_would_send() -> None:
    """The view markers' MSET, packed once by the store, is byte for byte redis-py's packing of
    ``MSET marker epoch ...`` (the epoch changes from one rebuild to the next)."""
    for epoch in (1796621575042, 7):
        args = [part for m in keys.view_markers() for part in (m, epoch)]
        expected = b"".join(Connection().pack_command("MSET", *args))
        assert _packed_markers(epoch) == expected


@pytest.mark.parametrize("agent", ["fraud-1", "t42-f007", "a{b}c", "ünïcode"])
def test_the_commit_scripts_keys_share_the_agents_slot(agent: str) -> None:
    """Every key the commit script touches (view marker and fence owner too) is in one slot."""
    script_keys = [keys.decision(agent, "r"), keys.grant(agent, "g"), keys.index(agent),
                   keys.revoked(agent), keys.quarantine(agent), keys.life(agent, "g"),
                   keys.published(agent, "r"), keys.view_marker(agent), keys.owner(agent, "esc"),
                   keys.rate(agent)]
    assert {key_slot(k.encode()) for k in script_keys} == {keys.agent_slot(agent)}


def test_expiry_indexes_are_sharded_and_each_agent_has_one_shard() -> None:
    """The sweeper reads every shard; an agent's expiry entries go to one of them."""
    shards = keys.expiry_indexes()
    assert len(set(shards)) == keys.EXPIRY_SHARDS
    assert len(set(keys.legacy_warning_indexes())) == keys.EXPIRY_SHARDS
    agents = [f"agent-{n}" for n in range(200)]
    used = {keys.expiry_index(a) for a in agents}
    assert used == set(shards), "200 agents spread over every shard"
    assert all(keys.legacy_warning_index(a) in keys.legacy_warning_indexes() for a in agents)


def test_a_cluster_scheme_selects_the_cluster_client() -> None:
    """redis+cluster:// (and rediss+cluster://) name a cluster node; other URLs do not."""
    assert cluster_url("redis+cluster://10.0.0.1:7000/0") == "redis://10.0.0.1:7000/0"
    assert cluster_url("rediss+cluster://u:p@h:7000") == "rediss://u:p@h:7000"
    assert cluster_url("redis://127.0.0.1:6379/0") is None


def test_the_redis_cluster_setting_is_carried_by_the_url() -> None:
    """redis_cluster=true turns a plain URL into a cluster URL; a cluster URL stays as it is."""
    assert Settings(redis_cluster=True, redis_url="redis://h:7000/0").redis_url == \
        "redis+cluster://h:7000/0"
    assert Settings(redis_url="redis://h:7000/0").redis_url == "redis://h:7000/0"
    assert Settings(redis_cluster=True, redis_url="rediss+cluster://h:1").redis_url == \
        "rediss+cluster://h:1"
