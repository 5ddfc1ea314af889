"""Stopping a recorded process: gone means every thread of it has exited (and it is reaped)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from broker.stack import procs

# The main thread exits first (pthread_exit) while another thread runs on: the process shows
# as a zombie until that thread ends, as a JVM's does while it shuts down.
LEADER_FIRST = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(1.5,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_main_thread_exited_is_not_gone_while_another_thread_runs(
        tmp_path: Path) -> None:
    record = procs.spawn([sys.executable, "-c", LEADER_FIRST], cwd=tmp_path,
                         log_path=tmp_path / "child.log")
    deadline = time.monotonic() + 10
    while (stat := procs._proc_stat(record.pid)) is not None and stat[0] != "Z":
        assert time.monotonic() < deadline, "the main thread never exited"
        time.sleep(0.01)
    assert procs._threads(record.pid) > 1
    assert not procs._gone(record.pid)  # a zombie leader, its other thread still running
    assert procs._wait_gone(record.pid, 10.0)
    assert record.pid not in procs._children  # reaped
    assert procs._proc_stat(record.pid) is None


def test_stop_waits_for_every_thread_and_reaps(tmp_path: Path) -> None:
    record = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path,
                         log_path=tmp_path / "child.log")
    assert procs.stop([record], timeout=10.0) == [record]
    assert procs._proc_stat(record.pid) is None
    assert procs.exit_code(record.pid) is None  # forgotten once reaped


def test_kill_9_returns_once_the_process_is_gone_and_reaped(tmp_path: Path) -> None:
    record = procs.spawn([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path,
                         log_path=tmp_path / "child.log")
    assert procs.kill(record, 10.0)
    assert record.pid not in procs._children  # no zombie left behind
    assert procs._proc_stat(record.pid) is None
    assert procs.kill(record, 10.0)  # already gone: nothing to kill, nothing else signalled
