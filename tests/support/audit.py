"""Helpers of the audit tests: seeded secrets and the leak scan, the CLI, topic copies, snapshots.

Imports broker, schemas.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from confluent_kafka import Producer
from typer.testing import CliRunner

from broker.adapters.audit import check as audit_check
from broker.adapters.audit import keys as audit_keys
from broker.adapters.audit.log import Stored, read_topic, watermarks
from broker.adapters.kafka import acls
from broker.adapters.kafka.admin import ensure_topics
from broker.adapters.kafka.bus import producer_config
from broker.cli.main import app
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import ROOT, worker_env
from schemas import topics
from schemas.events import AuditRecord
from tests.support.identities import shared_trust

# Secrets the tests seed into requests and signals; none may reach an audit topic in clear.
CANARIES: list[str] = []
ACCOUNT_PREFIX = "acct-"  # every account number the tests use starts so
_SHAPES = re.compile(rb"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.|PRIVATE KEY-----")


def seed(kind: str) -> str:
    """A fresh secret-looking value, registered for the end-of-session leak scan."""
    value = f"{kind}-{uuid.uuid4().hex}"
    CANARIES.append(value)
    return value


def _key_material(settings: Settings) -> list[bytes]:
    folder = audit_keys.key_dir(settings)
    hmac_hex = (folder / audit_keys.HMAC_FILE).read_bytes().strip()
    pem = (folder / audit_keys.SIGNING_FILE).read_bytes()
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    return [hmac_hex, bytes.fromhex(hmac_hex.decode()), body]


def audit_leaks(settings: Settings) -> list[str]:
    """Every seeded secret, key, account number or secret shape found in clear (raw + sealed)."""
    needles = [c.encode() for c in CANARIES] + [ACCOUNT_PREFIX.encode()]
    keys = _key_material(settings)
    found = []
    for topic in (topics.AUDIT_RAW.name, topics.AUDIT.name):
        for s in read_topic(role_access(settings, topics.AUDITOR), topic):
            blob = s.entry.value or b""
            where = f"{topic} partition {s.entry.partition} offset {s.entry.offset}"
            found += [f"{n.decode()!r} at {where}" for n in needles if n in blob]
            found += [f"audit key material at {where}" for k in keys if k in blob]
            found += [f"{m.group(0)[:20]!r} at {where}" for m in _SHAPES.finditer(blob)]
    return found


def public_keys(settings: Settings) -> list[Path]:
    """The public key the sealer signs with."""
    return audit_check.public_key_files(settings, [])


def wait_sealed(settings: Settings, timeout: float = 60.0) -> audit_check.Verification:
    """Wait until every raw record is chained and signed; fail if the chain is broken or an
    entry does not carry the broker's signature."""
    result = audit_check.wait_sealed(role_access(settings, topics.AUDITOR), public_keys(settings),
                                     timeout, trust=shared_trust(settings))
    assert result.ok, "audit chain not intact: " + "; ".join(result.problems[:5])
    assert not any("no broker signature" in n for n in result.notes), result.notes
    return result


def sealed(settings: Settings) -> list[Stored]:
    """Every entry of the sealed audit topic."""
    return list(read_topic(role_access(settings, topics.AUDITOR)))


def records(settings: Settings) -> list[AuditRecord]:
    """Every sealed record, in log order."""
    return [s.record() for s in sealed(settings)]


@dataclass(frozen=True)
class Ran:
    """What a CLI run returned."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, as a terminal shows them."""
        return self.stdout + self.stderr


def cli(settings: Settings, *args: str, columns: int = 200, role: str = topics.OPERATOR,
        **env: str) -> Ran:
    """Run ``permbroker ARGS`` in this process against the test services, as an operator (or
    the Kafka user of ``role``), on a terminal ``columns`` wide, with ``env`` set too."""
    user = worker_env(settings, role_access(settings, role))
    given = {k: v for k, v in user.items() if k.startswith("PERMBROKER_")}
    result = CliRunner().invoke(app, list(args), env={**given, **env, "COLUMNS": str(columns)})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def cli_process(settings: Settings, *args: str, timeout: float = 120.0) -> Ran:
    """Run ``python -m broker ARGS`` as its own process, as an operator (never raises)."""
    operator = worker_env(settings, role_access(settings, topics.OPERATOR))
    done = subprocess.run(
        [sys.executable, "-m", "broker", *args], env={**operator, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


@contextmanager
def cli_following(settings: Settings, *args: str) -> Iterator[Callable[[float], str | None]]:
    """``python -m broker ARGS`` running as an operator's process (one that follows: ``-f``);
    yields ``next_line(timeout)`` (None when no line came in time); stopped afterwards."""
    operator = worker_env(settings, role_access(settings, topics.OPERATOR))
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker", *args], env={**operator, "COLUMNS": "200"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    out = proc.stdout
    reader = threading.Thread(target=lambda: [lines.put(line) for line in out], daemon=True)
    reader.start()

    def next_line(timeout: float) -> str | None:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            return None
    try:
        yield next_line
        assert proc.poll() is None, f"the command ended (status {proc.returncode})"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        reader.join(timeout=10)  # the pipe ends with the process
        out.close()


def copy_partition(
    settings: Settings, partition: int, change: Callable[[list[Stored]], list[Stored]]
) -> str:
    """A new topic holding one partition of the sealed audit, bytes as stored, after ``change``."""
    name = f"permbroker.audit.copy-{uuid.uuid4().hex[:8]}"
    copy = topics.Topic(name, topics.PARTITIONS, "delete", topics.DAY_MS, (), "a test copy",
                        readers=(topics.OPERATOR, topics.AUDITOR))
    admin = role_access(settings, topics.ADMIN)  # a topic of the tests only: its ACLs too
    ensure_topics(admin, [copy])
    acls.apply(admin, acls.topic_acls(copy))
    entries = [s for s in sealed(settings) if s.entry.partition == partition]
    producer = Producer(producer_config(admin))
    for s in change(entries):
        producer.produce(name, value=s.entry.value, partition=partition)
    assert producer.flush(30) == 0
    return name


def kafka_ends(settings: Settings) -> dict[str, dict[int, tuple[int, int]]]:
    """Watermarks of every topic of the contract."""
    admin = role_access(settings, topics.ADMIN)
    return {t.name: watermarks(admin, t.name) for t in topics.ALL_TOPICS}


def redis_snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes | None, int]]:
    """Every key with its serialized value and absolute expiry."""
    return {k: (client.dump(k), client.pexpiretime(k)) for k in client.scan_iter(count=1000)}


def report(result: Ran) -> dict[str, object]:
    """The JSON a ``--json`` command printed (with its stderr when it is not JSON)."""
    try:
        data = json.loads(result.stdout)
    except ValueError as exc:
        raise AssertionError(f"not JSON (exit {result.returncode}): {result.stdout}\n"
                             f"{result.stderr}") from exc
    assert isinstance(data, dict | list)
    return data if isinstance(data, dict) else {"items": data}
