"""The stack the tests run on is configured as the architecture requires (Redis policy, topics)."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka.admin import ConfigResource, ResourceType

from broker.adapters.kafka.admin import admin_client
from schemas.topics import ADMIN, ALL_TOPICS
from tests.support.services import Services

pytestmark = pytest.mark.integration


def test_redis_never_evicts(services: Services) -> None:
    """Redis reports maxmemory-policy noeviction: eviction would drop live grants."""
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()


def test_every_registered_topic_exists_as_registered(services: Services) -> None:
    """Every topic of ALL_TOPICS exists with the registry's partition count and cleanup policy."""
    admin = admin_client(services.kafka(ADMIN))
    listed = admin.list_topics(timeout=10).topics
    for topic in ALL_TOPICS:
        assert topic.name in listed, topic.name
        assert len(listed[topic.name].partitions) == topic.partitions, topic.name
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, topic.name) for topic in ALL_TOPICS])
    policies = {resource.name: future.result(timeout=10)["cleanup.policy"].value
                for resource, future in futures.items()}
    assert policies == {topic.name: topic.cleanup_policy for topic in ALL_TOPICS}
