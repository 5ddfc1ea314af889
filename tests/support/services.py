"""Real Kafka + Redis for integration tests: env, else Docker, else native stack. Imports broker.

Order: PERMBROKER_TEST_KAFKA_BOOTSTRAP + PERMBROKER_TEST_REDIS_URL if both are set (with
PERMBROKER_TEST_KAFKA_CREDENTIALS naming its users' credentials.json when it has users); else
testcontainers when a Docker engine answers (PERMBROKER_TEST_DOCKER=0 skips the probe); else
`broker.stack.local.up` with its own dir and ports, stopped again at the end of the session.
Clients of the tests reach Kafka as the role they play (``role_access(settings, role)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import ensure_topics
from broker.config import Settings
from broker.errors import BusError
from broker.stack import local as stack
from broker.stack import rediscluster, redisusers
from broker.stack.credentials import Credentials, credentials_file
from schemas.topics import ADMIN

ROOT = Path(__file__).resolve().parents[2]
# PERMBROKER_TEST_PORT_OFFSET moves the native test stack (two checkouts on one machine).
_OFFSET = int(os.environ.get("PERMBROKER_TEST_PORT_OFFSET", "0"))
TEST_STACK = Settings(stack_dir=ROOT / ".stack" / "test", kafka_port=29092 + _OFFSET,
                      kafka_controller_port=29093 + _OFFSET, redis_port=26379 + _OFFSET)
KAFKA_IMAGE = "apache/kafka:4.1.1"
REDIS_IMAGE = "redis:7"

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer


@dataclass(frozen=True)
class Services:
    """Where the integration tests find Kafka and Redis, and Kafka's users (None: it has none)."""

    bootstrap: str
    redis_url: str = field(repr=False)  # it logs in as admin: never in a test report
    credentials_file: Path | None = None

    def kafka(self, role: str) -> KafkaAccess:
        """How a client playing ``role`` reaches the session's Kafka."""
        base = KafkaAccess(self.bootstrap)
        found = Credentials.read(self.credentials_file) if self.credentials_file else None
        return found.access(base, role) if found is not None else base


def unique(prefix: str) -> str:
    """A fresh id (agent, request, key prefix) so tests never collide and never need a flush."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def docker_answers() -> bool:
    """True only if a Docker engine answers a ping within a couple of seconds."""
    if os.environ.get("PERMBROKER_TEST_DOCKER") == "0":
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False  # the common case here: no engine, decided without any import or timeout
    import docker  # testcontainers' dependency; only needed when an engine may be there

    try:
        return bool(docker.from_env(timeout=3).ping())
    except docker.errors.DockerException:
        return False


def _wait_for_kafka(kafka: KafkaAccess, credentials: Credentials,
                    timeout: float = 120.0) -> None:
    """Provision (users, topics, ACLs) once the broker answers its admin."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            stack.provision(kafka, credentials, "permbroker")
            return
        except BusError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _kafka_container(credentials: Credentials) -> DockerContainer:
    """An apache/kafka container secured like the native stack (deploy/kafka-start.sh), its
    HOST listener advertised at the host's mapped port."""
    from testcontainers.core.container import DockerContainer

    script = "/tmp/permbroker_start.sh"
    box = DockerContainer(KAFKA_IMAGE).with_exposed_ports(9092)
    box = box.with_env("CLUSTER_ID", "cGVybWJyb2tlci10ZXN0cw")
    box = box.with_env("PB_KAFKA_INTERNAL_ADVERTISED", "localhost:19092")
    for user, password in credentials.passwords.items():
        box = box.with_env(f"PB_KAFKA_{user.upper()}_PASSWORD", password)
    # The advertised address is known only once the port is mapped: wait for a script.
    return box.with_command(["sh", "-c", f"while [ ! -f {script} ]; do sleep 0.1; done; "
                             f"sh {script}"])


def _put_script(container: DockerContainer, bootstrap: str) -> None:
    start = (ROOT / "deploy" / "kafka-start.sh").read_bytes()
    body = (f"export PB_KAFKA_HOST_ADVERTISED={bootstrap}\n"
            "exec sh /tmp/permbroker_kafka.sh\n").encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in (("tmp/permbroker_kafka.sh", start), ("tmp/permbroker_start.sh", body)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    container.get_wrapped_container().put_archive("/", archive.getvalue())


@contextlib.contextmanager
def _docker_services(users: Path) -> Iterator[Services]:
    from testcontainers.community.redis import RedisContainer

    credentials = Credentials.generate()
    credentials.write(users)
    redis_box = RedisContainer(REDIS_IMAGE).with_command(
        "redis-server --maxmemory-policy noeviction --save '' --appendonly no")
    with redis_box, _kafka_container(credentials) as kafka_box:
        bootstrap = f"{kafka_box.get_container_host_ip()}:{kafka_box.get_exposed_port(9092)}"
        _put_script(kafka_box, bootstrap)
        _wait_for_kafka(credentials.access(KafkaAccess(bootstrap), ADMIN), credentials)
        host, port = redis_box.get_container_host_ip(), redis_box.get_exposed_port(6379)
        bare = f"redis://{host}:{port}/0"
        client = redis.Redis.from_url(bare)  # the stack's users, then the default user off
        try:
            redisusers.apply(client, credentials)
        finally:
            client.close()
        yield Services(bootstrap, redisusers.url_of(bare, credentials, ADMIN), users)


@contextlib.contextmanager
def _native_services(log: Callable[[str], None]) -> Iterator[Services]:
    """Stop (and wipe) the test stack afterwards if this session started any of it.

    A stack that was entirely running already (another session in this tree, or one left by a
    killed run) is reused and left alone: stopping it could break a session still using it.
    """
    status = stack.up(TEST_STACK, progress=log)  # on failure it stops what it started itself
    try:
        # As admin: the harness reads and writes every key; processes log in as their role.
        yield Services(status.bootstrap, stack.redis_url(TEST_STACK),
                       credentials_file(TEST_STACK))
    finally:
        if status.started:
            stopped = stack.down(TEST_STACK, wipe=True)  # the next session starts from empty topics
            log(f"test stack stopped: {', '.join(stopped) or 'nothing was running'}")
        else:
            log(f"left the reused test stack running (stop it: make clean, or "
                f"PERMBROKER_STACK_DIR={TEST_STACK.stack_dir} permbroker stack down)")


# PERMBROKER_TEST_REDIS_CLUSTER=1: the grant store is a Redis Cluster of six local nodes (three
# masters, three replicas) started for the session, instead of the single Redis.
CLUSTER_BASE_PORT = 26500 + _OFFSET


@contextlib.contextmanager
def redis_cluster(log: Callable[[str], None] = print) -> Iterator[str]:
    """A fresh local Redis Cluster for one session (stopped and wiped after); yields its URL."""
    root = TEST_STACK.stack_dir / "redis-cluster"
    credentials = stack.credentials_of(TEST_STACK)  # the stack's users, as on the single Redis
    rediscluster.up(root, CLUSTER_BASE_PORT, log, credentials=credentials)
    try:
        yield rediscluster.url(CLUSTER_BASE_PORT, credentials)
    finally:
        log(f"stopped {rediscluster.down(root, CLUSTER_BASE_PORT, wipe=True)} cluster nodes")


@contextlib.contextmanager
def provide(log: Callable[[str], None] = print) -> Iterator[Services]:
    """Yield running services for one test session and stop whatever this call started."""
    with _provide(log) as services:
        if os.environ.get("PERMBROKER_TEST_REDIS_CLUSTER") != "1":
            yield services
            return
        with redis_cluster(log) as url:
            yield dataclasses.replace(services, redis_url=url)


@contextlib.contextmanager
def _provide(log: Callable[[str], None]) -> Iterator[Services]:
    bootstrap = os.environ.get("PERMBROKER_TEST_KAFKA_BOOTSTRAP")
    redis_url = os.environ.get("PERMBROKER_TEST_REDIS_URL")
    users = os.environ.get("PERMBROKER_TEST_KAFKA_CREDENTIALS")
    if bootstrap and redis_url:
        log(f"using services from the environment: Kafka {bootstrap}")
        services = Services(bootstrap, redis_url, Path(users) if users else None)
        ensure_topics(services.kafka(ADMIN))
        yield services
    elif docker_answers():
        log(f"starting {KAFKA_IMAGE} and {REDIS_IMAGE} with testcontainers")
        with _docker_services(TEST_STACK.stack_dir / "docker-credentials.json") as services:
            yield services
    else:
        log(f"no Docker engine: starting the native stack in {TEST_STACK.stack_dir}")
        with _native_services(log) as services:
            yield services
