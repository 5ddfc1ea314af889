"""Every ``permbroker`` command fails helpfully: services down, bad settings, bad arguments.

Table-driven: ``TABLE`` is checked against the Typer app, so a new command needs a row;
``needs`` says which services a command talks to, ``kind`` sets apart the commands that run no
client ("offline": local files only) and those that start services themselves ("starts": never
run with services down). Each command runs as its own process and must exit non-zero within
15 s with at most 5 lines on stderr, no traceback, no librdkafka line, and the cause named
(which service is down, which variable is wrong, which argument). Commands run in parallel
threads; a Kafka that is down is found by the CLI's probe at once (connection refused).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
import typer.main

from broker.cli.main import app
from schemas import topics
from tests.support.services import Services

pytestmark = pytest.mark.integration
A = "fraud-detector-1"
ID = "grant-00000000-0000-0000-0000-000000000000"
REQ = "req-00000000-0000-0000-0000-000000000000"
POLICY = str(Path(__file__).resolve().parents[2] / "policies" / "fraud")
# A public key only (no private half): what `agents reinstate` reads.
PUBLIC_KEY = str(Path(__file__).resolve().parents[1] / "support" / "data" / "agent-public-key.json")
BAD_OPTION = "--no-such-option"


@dataclass(frozen=True)
class Row:
    """One command: arguments that would work, the services it needs, a bad invocation."""

    args: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()
    kind: str = "client"  # client | offline | starts
    bad: tuple[str, ...] = (BAD_OPTION,)  # arguments that are wrong
    bad_says: str = "No such option"  # what the error names for ``bad``


K, R, KR = frozenset({"kafka"}), frozenset({"redis"}), frozenset({"kafka", "redis"})
OFFLINE = "offline"

TABLE: dict[str, Row] = {
    "revoke": Row(("--agent", A, "--reason", "test"), K),
    "inventory": Row((), KR),
    "worker": Row((), KR),
    "demo": Row((), kind="starts"),
    "dev": Row((), kind="starts"),
    "request": Row(("--agent", A, "--scope", "payments:accounts.freeze", "--reason", "r",
                    "--confidence", "0.9", "--resource", "acct-1", "--timeout", "3"), K,
                   bad=("--agent", A, "--scope", "payments:accounts.freeze", "--reason", "r",
                        "--confidence", "0.9", "--duration", "soon"),
                   bad_says="--duration"),
    "stack up": Row((), kind="starts"),
    "stack down": Row((), kind=OFFLINE),
    "stack status": Row((), kind=OFFLINE),
    "stack env": Row(("--role", "operator"), kind=OFFLINE),
    "stack compose-env": Row((), kind=OFFLINE),
    "grants list": Row((), R),
    "grants show": Row((ID, "--agent", A), R),
    # The grant is looked up in Redis first: with Redis up and no such grant it never gets
    # as far as Kafka, so only Redis is a cause it must name.
    "grants revoke": Row((ID, "--agent", A, "--reason", "test"), R),
    "grants rebuild": Row((), KR),
    "audit tail": Row(("--last", "1"), K),
    "audit verify": Row((), K),
    "audit export": Row((), K),
    "audit replay": Row(("--check",), K),
    "audit timeline": Row(("--agent", A), K),
    "audit checks": Row(("--agent", A), K),
    "audit hash": Row(("value",), kind=OFFLINE),
    "audit seal": Row((), K),
    "audit keys init": Row((), kind=OFFLINE),
    "policy diff": Row(("--candidate", POLICY, "--since", "1h"), K),
    "policy test": Row((POLICY,), kind=OFFLINE, bad=("/nonexistent/policy",),
                       bad_says="/nonexistent/policy"),
    "policy validate": Row((POLICY,), kind=OFFLINE, bad=("/nonexistent/policy",),
                           bad_says="/nonexistent/policy"),
    "revocations status": Row((), K),
    "agents keygen": Row(("--agent", A), kind=OFFLINE),
    "agents register": Row(("--agent", "fraud-detector-7", "--from-bundle", POLICY,
                            "--generate-key"), K),
    "agents enroll": Row(("--agent", "fraud-detector-7", "--from-bundle", POLICY),
                         kind=OFFLINE),
    "agents list": Row((), K),
    "agents show": Row((A,), K),
    "agents update": Row((A, "--reason", "test", "--threshold", "0.9"), K),
    "agents suspend": Row((A, "--reason", "test"), K),
    "agents resume": Row((A, "--reason", "test"), K),
    # An agent the registry and the bundle do not know is refused before Redis is read.
    "agents revoke": Row((A, "--reason", "test", "--acks-wait", "1"), K),
    "agents revoke-key": Row((A, "--reason", "test", "--kid", "kid-1"), K),
    "agents decommission": Row((A, "--reason", "test"), K),
    "agents renew": Row((A, "--reason", "test"), K),
    "agents reinstate": Row((A, "--reason", "test", "--public-key", PUBLIC_KEY), K,
                            bad=(A, "--reason", "test", "--public-key", "/nonexistent/key.json"),
                            bad_says="/nonexistent/key.json"),
    "agents stats": Row((A,), R),
    "agents class-stats": Row(("fraud-detection", "--model", "1.0"), R),
    "keys init": Row((), kind=OFFLINE),
    "keys rotate": Row((), K),
    "keys jwks": Row((), kind=OFFLINE),
    "keys add-operator": Row(("alice", "--key-file", "/nonexistent/key.json"), kind=OFFLINE),
    "keys assertion": Row(("GET", "/v1/grants"), kind=OFFLINE),
    "services keygen": Row(("svc-1",), kind=OFFLINE),
    "services register": Row(("svc-1",), kind=OFFLINE),
    "services list": Row((), kind=OFFLINE),
    "approvals list": Row((), R),
    "approvals approve": Row((REQ, "--agent", A), K),
    "approvals deny": Row((REQ, "--agent", A), K),
    "kafka provision": Row((), K),
    "kafka acls show": Row((), kind=OFFLINE),
    "kafka acls apply": Row((), K),
    "api": Row((), kind="starts"),
}

KAFKA_DOWN = r"Kafka (is unreachable|at \S+ did not answer)"
REDIS_DOWN = r"Redis( at \S+)? did not answer"
# One bad value per kind of mistake; commands take them in turn.
BAD_ENV = (("PERMBROKER_SESSION_TIMEOUT_S", "-5"), ("PERMBROKER_KAFKA_PORT", "70000"),
           ("PERMBROKER_DECISION_TIMEOUT_S", "soon"), ("PERMBROKER_LANE_LIMIT", "0"),
           ("PERMBROKER_API_PORT", "-1"), ("PERMBROKER_AUDIT_TIMEOUT_S", "0"))
Job = tuple[str, tuple[str, ...], Mapping[str, str]]


def commands() -> list[str]:
    """Every leaf command of the Typer app, as its words ("grants show")."""
    found: list[str] = []

    def walk(cmd: Any, path: list[str]) -> None:
        ctx = click.Context(cmd)
        # A group (typer vendors its own click); one with only a callback is a command.
        if hasattr(cmd, "list_commands") and cmd.list_commands(ctx):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, [*path, name])
        else:
            found.append(" ".join(path))

    walk(typer.main.get_command(app), [])
    return found


@dataclass(frozen=True)
class Run:
    """What one command did: exit code, stderr, seconds."""

    command: str
    argv: tuple[str, ...]
    code: int
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (f"permbroker {' '.join(self.argv)} -> exit {self.code} in {self.seconds:.1f}s, "
                f"stderr:\n{self.stderr}")


def run(command: str, argv: tuple[str, ...], env: Mapping[str, str], cwd: Path,
        timeout: float = 30.0) -> Run:
    """Run ``permbroker argv`` with exactly ``env`` (plus PATH), in ``cwd``."""
    exe = Path(sys.executable).with_name("permbroker")
    started = time.monotonic()
    try:
        proc = subprocess.run([str(exe), *argv], env={"PATH": os.environ.get("PATH", ""), **env},
                              cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, check=False)
        code, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = -9
        stderr = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr) or ""
    return Run(command, tuple(argv), code, stderr, time.monotonic() - started)


def run_all(jobs: list[tuple[str, tuple[str, ...], Mapping[str, str]]], cwd: Path,
            threads: int = 6) -> list[Run]:
    """Run many commands in parallel threads (each one its own process)."""
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda job: run(job[0], job[1], job[2], cwd), jobs))


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An operator's machine: keys initialised, services pointed at closed ports."""
    path = tmp_path_factory.mktemp("cli-home")
    env = down_env(path)
    for init in (("keys", "init"), ("audit", "keys", "init")):
        done = run(" ".join(init), init, env, path)
        assert done.code == 0, str(done)
    yield path


def down_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PERMBROKER_STACK_DIR": str(home / ".stack"),
            "PERMBROKER_POLICY_PATH": POLICY,
            "PERMBROKER_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port()}",
            "PERMBROKER_REDIS_URL": f"redis://127.0.0.1:{closed_port()}/0"}


def argv(name: str, args: tuple[str, ...]) -> tuple[str, ...]:
    return (*name.split(), *args)


def problems(runs: list[Run], causes: Mapping[str, str]) -> list[str]:
    """What is wrong with each run (empty when every command failed as it should)."""
    found = []
    for r in runs:
        lines = r.stderr.splitlines()
        wrong = [why for bad, why in (
            (r.code == 0, "exited 0"), (r.code < 0, "did not exit"),
            (r.seconds > 15, "took over 15 s"), (len(lines) > 5, f"{len(lines)} lines"),
            ("Traceback" in r.stderr, "a traceback"),
            (re.search(r"^%\d\||rdkafka", r.stderr, re.M) is not None, "a librdkafka line"),
            (re.search(causes[r.command], r.stderr) is None, f"no /{causes[r.command]}/"),
        ) if bad]
        if wrong:
            found.append(f"{', '.join(wrong)}: {r}")
    return found


def check(jobs: list[Job], causes: Mapping[str, str], home: Path) -> None:
    assert jobs
    bad = problems(run_all(jobs, home), causes)
    assert not bad, f"{len(bad)} of {len(jobs)} commands failed badly:\n" + "\n".join(bad)


def needing(*services: str) -> dict[str, Row]:
    """Rows of the client commands that talk to any of ``services``."""
    return {name: row for name, row in TABLE.items()
            if row.kind == "client" and row.needs & set(services)}


def test_the_table_covers_every_command() -> None:
    """Each command of the Typer app has a row (new commands are covered), and no row is stale."""
    assert sorted(TABLE) == sorted(commands())


def test_with_the_stack_down_each_client_command_names_the_service(home: Path) -> None:
    """Nothing answers: a command that needs Kafka says Kafka is unreachable; one that needs
    only Redis says Redis did not answer."""
    env = down_env(home)
    rows = needing("kafka", "redis")
    causes = {name: KAFKA_DOWN if "kafka" in row.needs else REDIS_DOWN
              for name, row in rows.items()}
    check([(name, argv(name, row.args), env) for name, row in rows.items()], causes, home)


def test_with_kafka_down_each_kafka_command_says_kafka(home: Path, services: Services) -> None:
    """Redis up (a database of its own), Kafka down: every command that needs Kafka says so."""
    env = {**down_env(home), "PERMBROKER_REDIS_URL": _db(services.redis_url, 15)}
    rows = needing("kafka")
    check([(name, argv(name, row.args), env) for name, row in rows.items()],
          dict.fromkeys(rows, KAFKA_DOWN), home)


def test_with_redis_down_each_redis_command_says_redis(home: Path, services: Services) -> None:
    """Kafka up (as the operator), Redis down: every command that needs Redis says so."""
    env = {**down_env(home), **services.kafka(topics.OPERATOR).env()}
    rows = needing("redis")
    check([(name, argv(name, row.args), env) for name, row in rows.items()],
          dict.fromkeys(rows, REDIS_DOWN), home)


def test_a_bad_setting_names_its_variable_in_every_command(home: Path) -> None:
    """An invalid PERMBROKER_* value (negative timeout, port out of range, not a number, a
    limit of zero) stops every command before it does anything, naming the variable."""
    jobs: list[Job] = []
    causes = {}
    for n, (name, row) in enumerate(sorted(TABLE.items())):
        var, value = BAD_ENV[n % len(BAD_ENV)]
        jobs.append((name, argv(name, row.args), {**down_env(home), var: value}))
        causes[name] = re.escape(f"{var}={value!r}")
    check(jobs, causes, home)


def test_a_bad_argument_is_named_by_every_command(home: Path) -> None:
    """An unknown option, a value that is not a duration, a bundle that does not exist: each
    command says which argument is wrong."""
    check([(name, argv(name, row.bad), down_env(home)) for name, row in TABLE.items()],
          {name: re.escape(row.bad_says) for name, row in TABLE.items()}, home)


def _db(url: str, db: int) -> str:
    """The same Redis, another database (so no command here touches the suite's data)."""
    return re.sub(r"(/\d+)?$", f"/{db}", url, count=1)
