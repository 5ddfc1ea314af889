"""Local stack processes: spawn, PID records, identity checks, stop. Imports stdlib, broker.errors.

A PID file records the pid, the exact argv and the kernel start time of a process we started,
so that `down` never signals a process that merely reused the pid. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker.errors import StackError


@dataclass(frozen=True)
class ProcRecord:
    """What we wrote down about a process we started."""

    pid: int
    cmdline: tuple[str, ...]
    start_ticks: int
    started_at: str

    def write(self, path: Path) -> None:
        """Write the record atomically (rename), so a reader never sees half a file."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @staticmethod
    def read(path: Path) -> ProcRecord | None:
        """The record at path, or None if there is none or it is unreadable."""
        try:
            data = json.loads(path.read_text())
            return ProcRecord(int(data["pid"]), tuple(data["cmdline"]),
                              int(data["start_ticks"]), str(data["started_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a pid from /proc, or None if there is no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces
    return fields[0], int(fields[19])


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(raw.decode(errors="replace").split("\0")[:-1])


def _same_process(record: ProcRecord) -> bool:
    """True if the recorded pid still has the recorded start time (exiting or not)."""
    stat = _proc_stat(record.pid)
    return stat is not None and stat[1] == record.start_ticks


def is_ours(record: ProcRecord) -> bool:
    """True if the recorded process still runs, with the same argv and start time."""
    stat = _proc_stat(record.pid)
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return stat[1] == record.start_ticks and _cmdline(record.pid) == record.cmdline


# Children started by this process: kept so they can be reaped (no zombies, no ResourceWarning).
_children: dict[int, subprocess.Popen[bytes]] = {}
_LOG_LIMIT = 8 * 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def spawn(cmd: Sequence[str], *, cwd: Path, log_path: Path) -> ProcRecord:
    """Start cmd in its own session (a Ctrl-C of ours does not reach it), output to log_path."""
    if log_path.is_file() and log_path.stat().st_size > _LOG_LIMIT:
        log_path.replace(log_path.with_suffix(".log.1"))  # keep one previous log, bounded
    with log_path.open("ab") as log:
        log.write(f"\n--- permbroker stack: starting at {_now()}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv built by us, no shell
                list(cmd), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            raise StackError(f"cannot start {cmd[0]}: {exc}") from exc
    _children[proc.pid] = proc
    _await_exec(proc, tuple(cmd))
    stat = _proc_stat(proc.pid)
    return ProcRecord(proc.pid, tuple(cmd), stat[1] if stat else -1, _now())


def _await_exec(proc: subprocess.Popen[bytes], argv: tuple[str, ...], timeout: float = 5.0) -> None:
    """Wait until /proc shows the new argv: Popen returns when close-on-exec fds are closed,
    a moment before the kernel publishes the new command line (it reads empty until then)."""
    deadline = time.monotonic() + timeout
    while _cmdline(proc.pid) != argv and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)


def exit_code(pid: int) -> int | None:
    """The exit status of a child we spawned that has ended, else None."""
    proc = _children.get(pid)
    return None if proc is None else proc.poll()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _gone(pid: int) -> bool:
    """Whether pid has exited, every thread of it (and, for a child of ours, it is reaped).

    A process whose main thread has exited shows as a zombie while its other threads still
    run (a JVM shutting down does): it holds its ports and files until the last one ends.
    """
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is None:  # waitpid reaps only once every thread has exited
            return False
        del _children[pid]
        return True
    stat = _proc_stat(pid)
    return stat is None or (stat[0] in ("Z", "X") and _threads(pid) <= 1)


def _threads(pid: int) -> int:
    """How many threads pid has (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def stop(records: Sequence[ProcRecord], timeout: float = 30.0) -> list[ProcRecord]:
    """SIGTERM every record that is still ours, wait, SIGKILL what is left; return the stopped."""
    alive = [record for record in records if is_ours(record)]
    for record in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for record in alive:
        if not _wait_gone(record.pid, max(deadline - time.monotonic(), 0.0)) \
                and _same_process(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            _wait_gone(record.pid, 5.0)
    return alive


def kill(record: ProcRecord, timeout: float = 30.0) -> bool:
    """kill -9 the recorded process (if it still is that process); True once it is gone, every
    thread of it, and reaped when it is a child of ours."""
    if _same_process(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, signal.SIGKILL)
        return _wait_gone(record.pid, timeout)
    _gone(record.pid)  # it had ended: collect it if it was our child
    return True


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if a server could bind host:port now (nothing else listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise StackError(f"cannot probe port {port} on {host}: {exc}") from exc
    return True


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - 64 * 1024, 0))
            text = handle.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    text = _ANSI.sub("", text)  # Maven colours its output even in batch mode
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock file, so two `up`/`down` calls on one dir take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
