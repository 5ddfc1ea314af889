"""Kafka administration: contract topics and SCRAM users, created idempotently.

Imports confluent-kafka, schemas.

Also imports access and broker.errors. Blocking calls (confluent-kafka): never call them in a
faust agent.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not re-declared
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)
from confluent_kafka.cimpl import NewTopic

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.clientlog import routed
from broker.errors import BusError, KafkaRefused, KafkaUnreachable
from schemas.topics import ALL_TOPICS, DEFAULT_TENANT, Topic, carries_routing, for_tenant

if TYPE_CHECKING:
    from confluent_kafka.admin._metadata import ClusterMetadata

_log = logging.getLogger(__name__)


def admin_client(kafka: KafkaAccess) -> AdminClient:
    """An AdminClient whose librdkafka logs go to Python logging, not straight to stderr."""
    return AdminClient(routed(kafka.confluent()))  # type: ignore[arg-type]  # stub lacks logger


def cluster_metadata(admin: AdminClient, timeout: float) -> ClusterMetadata:
    """The cluster's metadata (brokers, topics), or BusError if Kafka does not answer in time."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"Kafka did not answer a metadata request within {timeout}s: {exc}") from exc


def grant_topic_names(kafka: KafkaAccess, timeout: float = 10) -> list[str]:
    """The grant topics that exist and carry the workers' routing announcements (the namespace
    topics, ``permbroker.grants.<namespace>`` and each tenant's
    ``permbroker.tenant.<tenant>.grants.<namespace>``, and each tenant's
    ``permbroker.tenant.<tenant>.grants``), sorted."""
    found = cluster_metadata(admin_client(kafka), timeout).topics
    return sorted(t for t in found if carries_routing(t))


def own_topic(kafka: KafkaAccess, name: str, tenant: str, timeout: float = 10) -> str:
    """The topic ``tenant``'s agents or services read instead of shared topic ``name``: a
    declared tenant's own; the default tenant's own when the cluster has it (tenants are
    declared, and the shared topics are then the broker's alone), else ``name``."""
    own = for_tenant(name, tenant)
    if tenant != DEFAULT_TENANT or own == name:
        return own
    return own if own in cluster_metadata(admin_client(kafka), timeout).topics else name


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
    """Wait until metadata lists every topic with all its partitions, each with a leader
    (creation is async: a partition without a leader yet refuses even an offsets request)."""
    while True:
        remaining = deadline - time.monotonic()
        listed = cluster_metadata(admin, max(remaining, 1.0)).topics
        if all(t.name in listed and len(listed[t.name].partitions) == t.partitions
               and listed[t.name].error is None
               and all(p.leader >= 0 and p.error is None
                       for p in listed[t.name].partitions.values()) for t in topics):
            return
        if remaining <= 0:
            absent = [t.name for t in topics if t.name not in listed]
            raise BusError(f"topics not visible in Kafka metadata before the deadline: {absent}")
        time.sleep(0.1)


SCRAM_ITERATIONS = 4096  # Kafka's minimum for SCRAM-SHA-512, as StorageTool's format uses


def ensure_users(kafka: KafkaAccess, passwords: Mapping[str, str],
                 timeout: float = 30) -> list[str]:
    """Create the SCRAM-SHA-512 users of ``passwords`` that do not exist yet; their names.

    An existing user keeps its password (this never rotates one). Needs a super user.
    """
    admin = admin_client(kafka)  # referenced until its futures are done
    try:
        every = cast("Future[dict[str, Any]]",  # the form for all users: one future
                     admin.describe_user_scram_credentials(request_timeout=timeout))
        have = every.result(timeout)
    except (KafkaException, FutureTimeout) as exc:
        error = exc.args[0] if exc.args else None
        if not (isinstance(error, KafkaError) and error.code() == KafkaError.RESOURCE_NOT_FOUND):
            raise BusError(f"cannot list Kafka's SCRAM users as {kafka.principal}: {exc}") from exc
        have = {}
    missing = [user for user in passwords if user not in have]
    if not missing:
        return []
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, passwords[user].encode()) for user in missing]
    for user, future in admin.alter_user_scram_credentials(upserts,
                                                           request_timeout=timeout).items():
        try:
            future.result(timeout)
        except (KafkaException, FutureTimeout) as exc:
            raise BusError(f"Kafka refused to create the SCRAM user {user}: {exc}") from exc
    _log.info("created Kafka SCRAM users %s", missing)
    return missing


def probe(kafka: KafkaAccess, timeout: float = 5.0) -> None:
    """Fail fast, naming the cause, unless Kafka answers and accepts this client's credentials.

    KafkaUnreachable when no bootstrap server accepts a connection (or none answers a metadata
    request within ``timeout``), KafkaRefused when Kafka refuses the credentials.
    """
    _connectable(kafka.bootstrap, timeout)
    errors: list[KafkaError] = []
    admin = AdminClient(routed({**kafka.confluent(), "error_cb": errors.append}))  # type: ignore[arg-type]
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=0.25)
            return
        except KafkaException as exc:
            last: object = exc.args[0] if exc.args else exc
        admin.poll(0)  # serves error_cb
        refused = [e for e in errors if e.code() == KafkaError._AUTHENTICATION or e.fatal()]
        if refused:
            raise KafkaRefused(f"Kafka at {kafka.bootstrap} refused the credentials of "
                               f"{kafka.principal}: {refused[-1].str()}")
        if time.monotonic() >= deadline:
            raise KafkaUnreachable(f"Kafka at {kafka.bootstrap} did not answer within "
                                   f"{timeout:.0f}s ({last})")


def _connectable(bootstrap: str, timeout: float) -> None:
    """KafkaUnreachable unless one bootstrap server accepts a TCP connection."""
    problems = []
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return
        except (OSError, ValueError) as exc:
            problems.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
    raise KafkaUnreachable(f"Kafka is unreachable ({'; '.join(problems) or 'no servers'})")
