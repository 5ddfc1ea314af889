"""Kafka administration: contract topics, created idempotently. Imports confluent-kafka, schemas.

Also imports access and broker.errors. Blocking calls (confluent-kafka): never call them in a
faust agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from broker.adapters.kafka.access import KafkaAccess
from broker.errors import BusError
from schemas.topics import ALL_TOPICS, Topic

if TYPE_CHECKING:
    from confluent_kafka.admin._metadata import ClusterMetadata

_log = logging.getLogger(__name__)


def admin_client(kafka: KafkaAccess) -> AdminClient:
    """An AdminClient whose librdkafka logs go to Python logging, not straight to stderr."""
    return AdminClient(kafka.confluent(), logger=_log)


def cluster_metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    """The cluster's metadata (brokers, topics), or BusError if Kafka does not answer in time."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"Kafka did not answer a metadata request within {timeout}s: {exc}") from exc


def ensure_topics(kafka: KafkaAccess, topics: Sequence[Topic] = ALL_TOPICS,
                  timeout: float = 30) -> list[str]:
    """Create the topics that are missing, with the registry's partitions and configs.

    Idempotent: a topic that exists (or that a concurrent caller creates) is left alone.
    Returns the names this call created, once the broker's metadata shows all of them.
    """
    admin = admin_client(kafka)
    deadline = time.monotonic() + timeout
    existing = cluster_metadata(admin, timeout).topics
    missing = [topic for topic in topics if topic.name not in existing]
    if not missing:
        return []
    # replication_factor is left to the broker's default.replication.factor (1 on a single node).
    new = [NewTopic(t.name, num_partitions=t.partitions, config=t.kafka_config()) for t in missing]
    futures: dict[str, Future[None]] = admin.create_topics(new, request_timeout=timeout)
    created = [name for name, future in futures.items() if _created(name, future, deadline)]
    _await_visible(admin, missing, deadline)
    _log.info("created Kafka topics %s", created)
    return created


def _created(name: str, future: Future[None], deadline: float) -> bool:
    """Wait for one creation; False if the topic already existed, BusError on anything else."""
    try:
        future.result(timeout=max(deadline - time.monotonic(), 0.1))
    except FutureTimeout as exc:
        raise BusError(f"Kafka did not confirm creating topic {name} in time") from exc
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
            return False
        raise BusError(f"Kafka refused to create topic {name}: {exc}") from exc
    return True


def _await_visible(admin: AdminClient, topics: Sequence[Topic], deadline: float) -> None:
    """Wait until metadata lists every topic with all its partitions (creation is async)."""
    while True:
        remaining = deadline - time.monotonic()
        listed = cluster_metadata(admin, max(remaining, 1.0)).topics
        if all(t.name in listed and len(listed[t.name].partitions) == t.partitions
               and listed[t.name].error is None for t in topics):
            return
        if remaining <= 0:
            absent = [t.name for t in topics if t.name not in listed]
            raise BusError(f"topics not visible in Kafka metadata before the deadline: {absent}")
        time.sleep(0.1)
