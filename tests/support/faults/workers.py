"""Helpers for tests with more than one worker: a second worker, claimed epochs, who wrote what.

Imports broker, schemas, tests.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterable

from broker.adapters.kafka.bus import Record
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics

_CLAIMED = re.compile(r"claimed \[([^\]]*)\]")
_EPOCH = re.compile(r"'([^/']+)/(\d+)@(\d+)'")
Epochs = dict[tuple[str, int], int]
# How often tests poll a ledger (wait_until's ``every``): ledgers hold 10,000s of events, and
# scanning them 50 times a second takes CPU from the workers on a 2-core machine.
LEDGER_POLL_S = 0.5


def second_worker(settings: Settings, metrics_port: int, name: str) -> WorkerProcess:
    """Another worker of the same consumer group (same keys and stack dir, its own log, port)."""
    return WorkerProcess(settings.model_copy(update={"metrics_port": metrics_port}),
                         role_access(settings, topics.WORKER), name=name)


def claims(worker: WorkerProcess) -> list[Epochs]:
    """Every set of partitions/epochs this run of the worker logged having claimed, in order."""
    out = []
    for line in _CLAIMED.finditer(worker.log_text()):
        out.append({(t, int(p)): int(e) for t, p, e in _EPOCH.findall(line[1])})
    return out


def escalation_epochs(epochs: Epochs) -> Epochs:
    """Only the escalation topic's partitions (where requests are decided)."""
    return {tp: e for tp, e in epochs.items() if tp[0] == topics.ESCALATIONS.name}


def source_of(worker: WorkerProcess) -> str:
    """The ce_source the worker process stamps on everything it publishes (streams.worker)."""
    assert worker.pid is not None
    return f"/permbroker/worker/{socket.gethostname()}/{worker.pid}"


def header(record: Record, name: str) -> str:
    """One header of a record ('' when absent)."""
    for key, value in record.headers:
        if key == name:
            return value.decode(errors="replace")
    return ""


def written_by(records: Iterable[Record], source: str) -> list[Record]:
    """The records a given worker process published."""
    return [r for r in records if header(r, "ce_source") == source]


def pause(worker: WorkerProcess) -> None:
    """SIGSTOP: the worker stalls (no heartbeats, no processing) without dying."""
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGSTOP)


def resume(worker: WorkerProcess) -> None:
    """SIGCONT: the stalled worker runs again, unaware of what happened meanwhile."""
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGCONT)


def exited(worker: WorkerProcess) -> bool:
    """The worker process has ended."""
    return worker.proc is None or worker.proc.poll() is not None
