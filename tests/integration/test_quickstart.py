"""The README's quick start, run as written: ``make dev``, then its commands in another shell.

On a fresh stack of its own (own dir and ports): the first grant comes within 60 s of
``make dev`` starting, the example payments service allows it (its view reads the payments
topic, which the worker routes by default because the bundle's ceilings name it), and Ctrl-C
stops everything ``make dev`` started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from broker.config import Settings
from broker.demo.dev import NEXT_COMMANDS
from broker.stack import local as stack

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OFFSET = int(os.environ.get("PERMBROKER_TEST_PORT_OFFSET", "0"))
FIRST_GRANT_WITHIN_S = 60.0  # the promise of the quick start


def quickstart_blocks() -> list[list[str]]:
    """The bash blocks of the README's ``## Quick start`` section, each as its lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    return [block.splitlines() for block in re.findall(r"```bash\n(.*?)\n```", section, re.S)]


def test_the_readme_shows_the_commands_permbroker_dev_prints() -> None:
    """Byte for byte: the quick start starts with make dev, then shows NEXT_COMMANDS in order."""
    start, commands = quickstart_blocks()
    assert start[0].split("#")[0].strip() == "make dev"
    assert tuple(commands) == NEXT_COMMANDS


def _env(stack_dir: Path) -> dict[str, str]:
    """A shell's environment pointing every permbroker setting at this test's own stack."""
    kafka, redis_port = 29142 + OFFSET, 26429 + OFFSET
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERMBROKER_")}
    return {**env, "PERMBROKER_STACK_DIR": str(stack_dir),
            "PERMBROKER_KAFKA_PORT": str(kafka), "PERMBROKER_KAFKA_CONTROLLER_PORT": str(kafka + 1),
            "PERMBROKER_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka}", "PERMBROKER_REDIS_PORT":
            str(redis_port), "PERMBROKER_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PERMBROKER_API_PORT": str(28080 + OFFSET),
            "PERMBROKER_EXAMPLE_PORT": str(28081 + OFFSET), "PYTHONUNBUFFERED": "1"}


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The log once it holds ``text``; fails if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = log.read_text(errors="replace")
        if text in seen:
            return seen
        assert proc.poll() is None, f"make dev exited early:\n{seen[-3000:]}"
        time.sleep(0.2)
    pytest.fail(f"no {text!r} within {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def _descendants(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [d for child in children for d in (child, *_descendants(child))]


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][:1] not in ("Z", "X")


def _run_commands(commands: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The commands as written, in one bash, each traced with the time it started."""
    # PS4 set in the script: bash ignores one from the environment when run as root.
    script = "set -eo pipefail\nPS4='+ @$EPOCHREALTIME '\n" + "\n".join(commands) + "\n"
    return subprocess.run(["bash", "-x", "-c", script], cwd=ROOT, text=True, env=env,
                          capture_output=True, timeout=180, check=False)


def _started_at(trace: str, command: str) -> float:
    """When bash started ``command`` (epoch seconds), from its ``-x`` trace."""
    for line in trace.splitlines():
        if line.startswith("+ @") and line.split(" ", 2)[2].startswith(command):
            return float(line.split(" ", 2)[1][1:])
    raise AssertionError(f"{command!r} never ran:\n{trace[-3000:]}")


def test_make_dev_and_the_quickstart_commands_grant_and_the_example_service_allows(
        tmp_path: Path) -> None:
    """make dev, then the README's commands byte for byte: granted, listed, allowed; Ctrl-C
    stops every process make dev started."""
    blocks = quickstart_blocks()
    start, commands = blocks[0][0], blocks[1]
    env = _env(tmp_path / "stack")
    log = tmp_path / "make-dev.log"
    began = time.time()
    with log.open("wb") as out:
        make = subprocess.Popen(["bash", "-c", start], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(log, "Ctrl-C here stops everything", make, 150)
        ran = _run_commands(commands, env)
        assert ran.returncode == 0, f"{ran.stdout}\n{ran.stderr[-3000:]}"
        granted_by = _started_at(ran.stderr, commands[3])  # the command after the request
        assert ran.stdout.startswith("GRANTED"), ran.stdout
        assert re.search(r"│ acct-1 ", ran.stdout), ran.stdout  # the listing shows the grant
        assert re.search(r"^200 .*\"status\":\"frozen\"", ran.stdout, re.M), ran.stdout
        assert granted_by - began <= FIRST_GRANT_WITHIN_S, f"{granted_by - began:.1f}s"
        pids = [int(p) for p in re.findall(r"pid (\d+) starting", log.read_text())]
        dev_pids = _descendants(make.pid)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in make dev's terminal
        make.wait(60)
    deadline = time.monotonic() + 90
    while any(_alive(p) for p in dev_pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    assert not [p for p in (*pids, *dev_pids) if _alive(p)], text[-3000:]
    status = stack.status(Settings(stack_dir=tmp_path / "stack"))
    assert not (status.kafka.running or status.redis.running), text[-3000:]
    assert "SIGINT: stopping everything" in text, text[-3000:]
