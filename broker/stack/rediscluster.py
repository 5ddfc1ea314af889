"""A local Redis Cluster: six redis-server processes, three masters and three replicas. Imports
stdlib, redis, broker.errors and the stack procs helpers.

For ``permbroker stack up --redis-cluster`` and the tests: nodes on loopback ports
``base .. base+5``, each in <root>/<port>/ with its own nodes.conf, created with
``redis-cli --cluster create … --cluster-replicas 1 --cluster-yes``. Like the single Redis it
runs with ``maxmemory-policy noeviction`` and without persistence (the view is rebuilt from
Kafka). A short node timeout lets a replica take over a killed master within seconds. Given the
stack's credentials, every node has its users (the default user off) and a replica logs in to
its master as ``admin``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from broker.errors import StackError
from broker.stack import redisusers
from broker.stack.credentials import Credentials
from broker.stack.procs import ProcRecord, exit_code, is_ours, port_open, spawn, stop, tail
from schemas.topics import ADMIN

NODES = 6
LOOPBACK = "127.0.0.1"
NODE_TIMEOUT_MS = 2000
EPHEMERAL_LOW = 32768  # Linux's default ip_local_port_range starts here


def url(base_port: int, credentials: Credentials | None = None, role: str = ADMIN) -> str:
    """The cluster URL clients are given (any node will do; the client learns the rest), as
    ``role``'s user when the cluster has users."""
    bare = f"redis+cluster://{LOOPBACK}:{base_port}/0"
    return redisusers.url_of(bare, credentials, role) if credentials is not None else bare


def _ports(base_port: int) -> list[int]:
    return [base_port + n for n in range(NODES)]


def bus_port(port: int) -> int:
    """The node's cluster bus port: Redis's default (port + 10000), or port - 10000 where the
    default would fall in Linux's ephemeral range (32768-60999), in which any outgoing
    connection may hold it and keep the node from starting."""
    return port + 10000 if port + 10000 < EPHEMERAL_LOW else port - 10000


def _users(node_dir: Path, credentials: Credentials | None) -> list[str]:
    """The node's config file with the users (and a replica's login to its master), 0600; no
    file (no users) without ``credentials``."""
    if credentials is None:
        return []
    acl = redisusers.write_acl_file(node_dir / "users.acl", credentials)
    conf = node_dir / "users.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"aclfile {acl}\nmasteruser {ADMIN}\nmasterauth {credentials.password(ADMIN)}\n")
    return [str(conf)]


def _argv(port: int, node_dir: Path, config: list[str]) -> list[str]:
    tool = shutil.which("redis-server") or "redis-server"
    return [tool, *config, "--bind", LOOPBACK, "--port", str(port),
            "--cluster-port", str(bus_port(port)),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--dir", str(node_dir), "--daemonize", "no",
            "--logfile", "", "--set-proc-title", "no"]


def _await_ports(records: list[ProcRecord], ports: list[int], root: Path,
                 deadline: float) -> None:
    for record, port in zip(records, ports, strict=True):
        while not port_open(port):
            if exit_code(record.pid) is not None or not is_ours(record):
                log = root / str(port) / "redis.log"
                raise StackError(f"redis-server {port} exited while starting:\n{tail(log)}")
            if time.monotonic() >= deadline:
                raise StackError(f"redis-server {port} did not answer in time")
            time.sleep(0.1)


def _fields(info: object) -> dict[str, str]:
    """CLUSTER INFO as name -> value (redis-py may have parsed it into a dict already)."""
    if isinstance(info, dict):
        return {str(k): str(v) for k, v in info.items()}
    text = info.decode() if isinstance(info, bytes) else str(info)
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, v in pairs}


def cluster_ok(base_port: int, credentials: Credentials | None = None) -> bool:
    """Whether every node answers and reports ``cluster_state:ok`` with all slots served."""
    user, password = (ADMIN, credentials.password(ADMIN)) if credentials else (None, None)
    for port in _ports(base_port):
        client = redis.Redis(host=LOOPBACK, port=port, socket_timeout=1.0,
                             socket_connect_timeout=1.0, username=user, password=password)
        try:
            info = _fields(client.cluster("INFO"))
        except redis.RedisError:
            return False
        finally:
            client.close()
        if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
            return False
    return True


def _create(ports: list[int], credentials: Credentials | None) -> None:
    tool = shutil.which("redis-cli") or "redis-cli"
    argv = [tool, "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in ports),
            "--cluster-replicas", "1", "--cluster-yes"]
    env = dict(os.environ)
    if credentials is not None:  # the password by environment, never on a command line
        argv += ["--user", ADMIN]
        env["REDISCLI_AUTH"] = credentials.password(ADMIN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False,  # noqa: S603
                          env=env)
    if done.returncode != 0:
        raise StackError(f"redis-cli --cluster create failed:\n{done.stdout}\n{done.stderr}")


def up(root: Path, base_port: int, say: Callable[[str], None] = lambda _m: None,
       timeout: float = 60.0, credentials: Credentials | None = None) -> list[ProcRecord]:
    """Start six fresh nodes under ``root`` and create the cluster; returns their records.
    With ``credentials``, every node has the stack's users (broker/stack/redisusers.py) and
    the default user is off.

    A StackError (with what failed) stops the nodes it started.
    """
    ports = _ports(base_port)
    busy = [p for p in ports if port_open(p)]
    if busy:
        raise StackError(f"ports {busy} are in use: pick another base port for the cluster")
    records: list[ProcRecord] = []
    try:
        for port in ports:
            node_dir = root / str(port)
            shutil.rmtree(node_dir, ignore_errors=True)  # a fresh cluster: no old nodes.conf
            node_dir.mkdir(parents=True)
            record = spawn(_argv(port, node_dir, _users(node_dir, credentials)), cwd=node_dir,
                           log_path=node_dir / "redis.log")
            record.write(node_dir / "redis.pid")
            records.append(record)
        deadline = time.monotonic() + timeout
        _await_ports(records, ports, root, deadline)
        say(f"Creating a Redis Cluster on {LOOPBACK}:{ports[0]}-{ports[-1]} (3 masters, "
            "3 replicas)")
        _create(ports, credentials)
        while not cluster_ok(base_port, credentials):
            if time.monotonic() >= deadline:
                raise StackError("the Redis Cluster did not reach cluster_state:ok in time")
            time.sleep(0.2)
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        stop(records)
        raise StackError(str(exc)) from exc
    return records


def running(root: Path, base_port: int) -> list[ProcRecord]:
    """The recorded nodes under ``root`` that are still ours and alive."""
    found = []
    for port in _ports(base_port):
        record = ProcRecord.read(root / str(port) / "redis.pid")
        if record is not None and is_ours(record):
            found.append(record)
    return found


def down(root: Path, base_port: int, *, wipe: bool = False) -> int:
    """Stop the recorded nodes (never any other process); returns how many were stopped."""
    stopped = stop(running(root, base_port))
    for port in _ports(base_port):
        (root / str(port) / "redis.pid").unlink(missing_ok=True)
        if wipe:
            shutil.rmtree(root / str(port), ignore_errors=True)
    return len(stopped)
