"""The local Kafka + Redis stack as plain background processes: up, down, status, ensure_tools.

Imports stdlib, redis, confluent-kafka (via admin), config, errors and the stack_* helpers.
Used by `permbroker stack`, the Makefile, the demo and the test fixtures. State lives in
settings.stack_dir: kafka/ (properties, cluster id, KRaft log dir, credentials.json), redis/,
*.log, *.pid.

Kafka always runs with authentication and ACLs (broker/stack/kafka.py): ``up`` generates one
password per role on the first start (credentials.json, 0600), creates the users, the topics
and the ACL table of the topic registry (``provision``), each time idempotently. Redis runs with
the same users (broker/stack/redisusers.py: ``--aclfile``, the default user off); ``redis_url``
is its URL as one role's user, ``as_admin`` settings that reach it as ``admin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from broker.adapters.audit.keys import ensure_keys
from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import (
    admin_client,
    cluster_metadata,
    ensure_topics,
    ensure_users,
)
from broker.config import Settings
from broker.errors import BusError, ConfigError, StackError
from broker.identity.tenants import declared
from broker.stack import kafka as stack_kafka
from broker.stack import redisusers
from broker.stack.credentials import Credentials, credentials_file
from broker.stack.procs import (
    ProcRecord,
    exit_code,
    is_ours,
    locked,
    port_free,
    port_open,
    spawn,
    stop,
    tail,
)
from broker.stack.tenants import apply_acls, provision_tenants
from schemas.topics import ADMIN

Progress = Callable[[str], None]
LOOPBACK = "127.0.0.1"
KAFKA, REDIS = "kafka", "redis"
# Which command each service needs, and the Debian package that brings it.
# How long a port may stay taken by a stray client socket before `up` gives up on it.
PORT_GRACE_S = 15.0
_TOOLS = {"java": "openjdk-17-jre-headless", "mvn": "maven", "redis-server": "redis-server",
          "redis-cli": "redis-tools"}  # redis-cli creates the local Redis Cluster


@dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack as seen now."""

    name: str
    pid: int | None
    running: bool
    answering: bool
    address: str
    log: str


@dataclass(frozen=True)
class StackStatus:
    """Both services; from `up` also what it started (not reused) and the topics it created."""

    kafka: ServiceStatus
    redis: ServiceStatus
    topics_created: tuple[str, ...] = ()
    started: tuple[str, ...] = ()
    credentials: str = ""  # the file with every role's Kafka password ('' when none)
    acls_created: int = 0

    @property
    def bootstrap(self) -> str:
        return self.kafka.address

    @property
    def redis_url(self) -> str:
        return f"redis://{self.redis.address}/0"

    @property
    def ready(self) -> bool:
        return self.kafka.answering and self.redis.answering

    def to_dict(self) -> dict[str, object]:
        return {"ready": self.ready, "bootstrap": self.bootstrap, "redis_url": self.redis_url,
                "credentials": self.credentials,
                "services": [asdict(self.kafka), asdict(self.redis)],
                "topics_created": list(self.topics_created), "started": list(self.started)}


def _dir(settings: Settings) -> Path:
    return settings.stack_dir.expanduser().resolve()


def _pid_file(settings: Settings, name: str) -> Path:
    return _dir(settings) / f"{name}.pid"


def _log_file(settings: Settings, name: str) -> Path:
    return _dir(settings) / f"{name}.log"


def _ports(settings: Settings, name: str) -> tuple[int, ...]:
    if name == KAFKA:
        return settings.kafka_port, settings.kafka_controller_port
    return (settings.redis_port,)


def admin_access(settings: Settings) -> KafkaAccess:
    """The stack's Kafka as its super user (anonymous when the stack has no users yet)."""
    base = KafkaAccess(f"{LOOPBACK}:{settings.kafka_port}")
    credentials = credentials_of(settings)
    return credentials.access(base, ADMIN) if credentials is not None else base


def _kafka_answers(settings: Settings, timeout: float = 2.0) -> bool:
    if not port_open(settings.kafka_port):
        return False
    try:
        return bool(cluster_metadata(admin_client(admin_access(settings)), timeout).brokers)
    except BusError:
        return False


def _redis_answers(port: int, timeout: float = 1.0) -> bool:
    if not port_open(port):
        return False
    client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=timeout,
                         socket_connect_timeout=timeout)
    try:
        return bool(client.ping())
    except redis.AuthenticationError:
        return True  # it answered: it wants a login (the stack's users)
    except redis.RedisError:
        return False
    finally:
        client.close()


def _answers(settings: Settings, name: str) -> bool:
    if name == KAFKA:
        return _kafka_answers(settings)
    return _redis_answers(settings.redis_port)


def _service_status(settings: Settings, name: str) -> ServiceStatus:
    record = ProcRecord.read(_pid_file(settings, name))
    running = record is not None and is_ours(record)
    return ServiceStatus(name, record.pid if record else None, running, _answers(settings, name),
                         f"{LOOPBACK}:{_ports(settings, name)[0]}", str(_log_file(settings, name)))


def status(settings: Settings) -> StackStatus:
    """Where each service stands: our PID alive, and answering its protocol on its port."""
    users = credentials_file(settings)
    return StackStatus(_service_status(settings, KAFKA), _service_status(settings, REDIS),
                       credentials=str(users) if users.is_file() else "")


def missing_tools() -> list[str]:
    """The commands the stack needs that are not on PATH."""
    return [name for name in _TOOLS if shutil.which(name) is None]


def ensure_tools(progress: Progress | None = None) -> None:
    """Install java, mvn, redis-server and redis-cli with apt-get if missing (root on Debian),
    else explain."""
    say = progress or (lambda _msg: None)
    missing = missing_tools()
    if not missing:
        return
    packages = [_TOOLS[name] for name in missing]
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None or not Path("/etc/debian_version").is_file():
        raise StackError(f"missing {', '.join(missing)}: install {' '.join(packages)} "
                         "(Debian/Ubuntu names; any Java 17+ JRE, Maven 3 and Redis 7 will do)")
    say(f"Installing {' '.join(packages)} with apt-get (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-q"], [apt, "install", "-y", "-q", *packages]):
        if subprocess.run(cmd, env=env, check=False, stdin=subprocess.DEVNULL).returncode:  # noqa: S603
            raise StackError(f"`{' '.join(cmd)}` failed; install {' '.join(packages)} yourself")
    if still := missing_tools():
        raise StackError(f"still missing after apt-get: {', '.join(still)}")


def _frees_up(port: int, timeout: float) -> bool:
    """Whether the port is free, or frees up within ``timeout``.

    Right after a service died, a client retrying its connection can hold the port for a
    moment: the ports sit in the ephemeral range, and a connect to a local port nobody listens
    on may be given that very port as its source (a TCP self-connect), until the client drops it.
    """
    deadline = time.monotonic() + timeout
    while not port_free(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def _claim(settings: Settings, name: str) -> ProcRecord | None:
    """Our live record for a service, or None after checking its ports are free to start it."""
    pid_file = _pid_file(settings, name)
    record = ProcRecord.read(pid_file)
    if record is not None and is_ours(record):
        return record
    pid_file.unlink(missing_ok=True)
    for port in _ports(settings, name):
        if not _frees_up(port, PORT_GRACE_S):
            raise StackError(
                f"port {port} ({name}) is in use by a process this stack did not start "
                f"(no live PID in {pid_file}). Stop that process (`ss -ltnp 'sport = :{port}'` "
                f"shows it), or pick free ports with PERMBROKER_KAFKA_PORT, "
                f"PERMBROKER_KAFKA_CONTROLLER_PORT, PERMBROKER_REDIS_PORT.")
    return None


def _start(settings: Settings, name: str, argv: list[str], cwd: Path) -> ProcRecord:
    record = spawn(argv, cwd=cwd, log_path=_log_file(settings, name))
    record.write(_pid_file(settings, name))
    return record


def stack_credentials(settings: Settings, kafka_dir: Path, say: Progress) -> Credentials:
    """The stack's users: kept from an earlier start, else generated now (before formatting)."""
    path = credentials_file(settings)
    try:
        credentials = Credentials.read(path)
    except ConfigError as exc:
        raise StackError(str(exc)) from exc
    if credentials is not None:
        return credentials
    if stack_kafka.formatted(kafka_dir):
        raise StackError(f"the Kafka data in {kafka_dir} was made without the users in {path} "
                         "(an older stack, or the file was deleted); wipe it and start again: "
                         "permbroker stack down --wipe")
    credentials = Credentials.generate()
    credentials.write(path)
    say(f"Generated a Kafka password per role in {path} (0600)")
    return credentials


def _start_kafka(settings: Settings, say: Progress) -> ProcRecord:
    libs = stack_kafka.ensure_jars(settings, say)
    kafka_dir = _dir(settings) / KAFKA
    (kafka_dir / "data").mkdir(parents=True, exist_ok=True)
    credentials = stack_credentials(settings, kafka_dir, say)
    properties = stack_kafka.write_properties(settings, kafka_dir, credentials)
    stack_kafka.format_once(libs, kafka_dir, properties, credentials)
    say(f"Starting Kafka {settings.kafka_version} on {LOOPBACK}:{settings.kafka_port}")
    return _start(settings, KAFKA, stack_kafka.server_argv(
        libs, properties, extra=settings.kafka_jvm_options), kafka_dir)


def _start_redis(settings: Settings, say: Progress) -> ProcRecord:
    redis_dir = _dir(settings) / REDIS
    redis_dir.mkdir(parents=True, exist_ok=True)
    say(f"Starting Redis on {LOOPBACK}:{settings.redis_port}")
    argv = [stack_kafka.tool("redis-server"), "--bind", LOOPBACK,
            "--port", str(settings.redis_port),
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
            "--dir", str(redis_dir), "--daemonize", "no", "--logfile", "",
            "--set-proc-title", "no"]  # keep argv intact: `down` checks it before signalling
    credentials = credentials_of(settings)
    if credentials is not None:  # the roles' users; nobody gets in without logging in
        argv += ["--aclfile", str(redisusers.write_acl_file(redis_dir / "users.acl",
                                                            credentials))]
    return _start(settings, REDIS, argv, redis_dir)


def credentials_of(settings: Settings) -> Credentials | None:
    """The stack's users (None before its first start)."""
    try:
        return Credentials.read(credentials_file(settings))
    except ConfigError as exc:
        raise StackError(str(exc)) from exc


def redis_url(settings: Settings, role: str = ADMIN) -> str:
    """The URL of the stack's Redis as ``role``'s user (without a user when the stack has no
    users: a Redis started before the stack had any)."""
    credentials = credentials_of(settings)
    bare = _anonymous_redis_url(settings)
    return redisusers.url_of(bare, credentials, role) if credentials is not None else bare


def _anonymous_redis_url(settings: Settings) -> str:
    return f"redis://{LOOPBACK}:{settings.redis_port}/0"


def start_redis(settings: Settings, timeout: float = 60.0) -> ProcRecord:
    """Start (or reuse) only the Redis of a stack whose Kafka runs elsewhere (a local cluster)."""
    record = _claim(settings, REDIS) or _start_redis(settings, lambda _msg: None)
    _await(settings, REDIS, record, time.monotonic() + timeout)
    return record


def _await(settings: Settings, name: str, record: ProcRecord, deadline: float) -> None:
    """Wait until the service answers; StackError with its log tail if it dies or times out."""
    log = _log_file(settings, name)
    while not _answers(settings, name):
        if exit_code(record.pid) is not None or not is_ours(record):
            raise StackError(f"{name} exited (status {exit_code(record.pid)}) while starting; "
                             f"{log} ends:\n{tail(log)}")
        if time.monotonic() >= deadline:
            raise StackError(f"{name} did not answer on port {_ports(settings, name)[0]} in "
                             f"time; {log} ends:\n{tail(log)}")
        time.sleep(0.2)


def _start_all(settings: Settings, say: Progress, timeout: float,
               fresh: list[ProcRecord]) -> tuple[tuple[str, ...], int]:
    """Start what is not running yet (appending to fresh), wait for both, then ``provision``."""
    claimed = {name: _claim(settings, name) for name in (KAFKA, REDIS)}  # fail before starting
    records: dict[str, ProcRecord] = {}
    for name, start in ((KAFKA, _start_kafka), (REDIS, _start_redis)):
        record = claimed[name]
        if record is None:
            record = start(settings, say)
            fresh.append(record)
        else:
            say(f"Reusing our running {name} (pid {record.pid}, started {record.started_at})")
        records[name] = record
    started = time.monotonic()
    deadline = started + timeout
    _await(settings, REDIS, records[REDIS], deadline)
    _await(settings, KAFKA, records[KAFKA], deadline)
    say(f"Kafka and Redis answer (waited {time.monotonic() - started:.1f}s)")
    credentials = Credentials.read(credentials_file(settings))
    if credentials is None:
        raise StackError(f"Kafka answers but its users' file {credentials_file(settings)} is "
                         "missing (a stack from before Kafka had users?); stop and wipe it: "
                         "permbroker stack down --wipe")
    try:
        created, applied = provision(admin_access(settings), credentials, settings.app_id,
                                     tenants=declared(settings.tenant_policies_dir))
        tenants = provision_tenants(settings, admin_access(settings), credentials, timeout)
        if tenants:
            say(f"Tenants' users, topics and ACLs: {', '.join(tenants)}")
        _redis_users(settings)
    except BusError as exc:
        raise StackError(f"Kafka answers but setting up its users, topics and ACLs failed: "
                         f"{exc}") from exc
    if created:
        say(f"Created topics: {', '.join(created)}")
    say(f"ACLs: {len(applied.created)} created, {len(applied.kept)} in place"
        + (f", {len(applied.removed)} removed" if applied.removed else ""))
    return tuple(created), len(applied.created)


def as_admin(settings: Settings) -> Settings:
    """``settings`` reaching the stack's Redis as its admin user (the demo, ``dev``, benchmarks:
    each process they start is handed its own role's user, ``credentials.redis_of``)."""
    return settings.model_copy(update={"redis_url": redis_url(settings)})


def _redis_users(settings: Settings) -> None:
    """Every user the credentials hold now (a tenant's added since Redis started) into Redis."""
    credentials = credentials_of(settings)
    if credentials is None:
        return
    # As admin; a Redis started before the stack had users lets its default user in, once.
    for url in (redis_url(settings), _anonymous_redis_url(settings)):
        try:
            redisusers.apply_at(url, credentials)
            return
        except redis.AuthenticationError:
            continue
        except redis.RedisError as exc:
            raise StackError(f"Redis answers but setting its users failed: {exc}") from exc
    raise StackError(f"Redis on port {settings.redis_port} refuses the stack's admin user (a "
                     "Redis this stack did not start?); stop it: permbroker stack down")


def provision(
    admin: KafkaAccess, credentials: Credentials, app_id: str, timeout: float = 30.0,
    tenants: tuple[str, ...] = (),
) -> tuple[list[str], acls.Applied]:
    """Users, then topics, then the ACL table (workers' group and ids: ``app_id``; the
    declared ``tenants``, whose own users and topics are ``provision_tenants``'), as admin.

    Idempotent: what exists is kept. Returns the topics created and what the ACLs came to.
    """
    ensure_users(admin, credentials.users(), timeout)
    created = ensure_topics(admin, timeout=timeout)
    return created, apply_acls(admin, app_id, tenants, timeout=timeout)


def up(settings: Settings, *, progress: Progress | None = None,
       timeout: float = 120.0) -> StackStatus:
    """Start (or reuse) Kafka and Redis, wait until both answer, then ``provision`` Kafka.

    Idempotent: services whose PID file is ours and alive are reused. If anything fails, the
    processes this call started are stopped again before the StackError propagates.
    """
    say = progress or (lambda _msg: None)
    if missing := missing_tools():
        raise StackError(f"missing {', '.join(missing)}; run `make deps` or install them")
    fresh: list[ProcRecord] = []
    with locked(_dir(settings) / ".lock"):
        try:
            created, acls_created = _start_all(settings, say, timeout, fresh)
        except BaseException:  # StackError, but also Ctrl-C or a test timeout: leave nothing
            _stop_recorded(settings, fresh)
            raise
    for key_file in ensure_keys(settings):
        say(f"created audit key {key_file}")
    kafka, redis_status = _service_status(settings, KAFKA), _service_status(settings, REDIS)
    fresh_pids = {record.pid for record in fresh}
    started = tuple(st.name for st in (kafka, redis_status) if st.pid in fresh_pids)
    return StackStatus(kafka, redis_status, created, started, str(credentials_file(settings)),
                       acls_created)


def _stop_recorded(settings: Settings, records: list[ProcRecord],
                   timeout: float = 30.0) -> list[str]:
    """Stop these records and remove their PID files; names of what was running."""
    names = {record.pid: name for name in (KAFKA, REDIS)
             for record in [ProcRecord.read(_pid_file(settings, name))] if record is not None}
    stopped = [f"{names.get(r.pid, '?')} (pid {r.pid})" for r in stop(records, timeout=timeout)]
    for record in records:
        if (name := names.get(record.pid)) is not None:
            _pid_file(settings, name).unlink(missing_ok=True)
    return stopped


def down(settings: Settings, *, wipe: bool = False, timeout: float = 30.0) -> list[str]:
    """Stop the processes this stack recorded (never any other); optionally delete their data."""
    root = _dir(settings)
    with locked(root / ".lock"):
        records = [r for name in (KAFKA, REDIS)
                   if (r := ProcRecord.read(_pid_file(settings, name))) is not None]
        stopped = _stop_recorded(settings, records, timeout)
        for name in (KAFKA, REDIS):
            _pid_file(settings, name).unlink(missing_ok=True)
            if wipe:  # only our own subdirs, never stack_dir itself
                shutil.rmtree(root / name, ignore_errors=True)
    return stopped


def main(argv: list[str]) -> int:
    """`python -m broker.stack.local ensure-tools` (used by `make deps`)."""
    if argv != ["ensure-tools"]:
        print("usage: python -m broker.adapters.stack ensure-tools", file=sys.stderr)
        return 2
    try:
        ensure_tools(lambda msg: print(f"==> {msg}", flush=True))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("java, mvn, redis-server and redis-cli are installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
