"""The audit sealer as a child process (``permbroker sealer``), beside the stack's workers.

Imports config, the Kafka access and the worker child (the same environment and lifecycle).

The stack's workers run with ``audit_sealer`` off (``sealing_off``) so that chaining and signing
the audit takes none of a worker's CPU; this one process seals every raw audit partition (more
than one share the partitions through their consumer group) and serves its lag on
``audit_sealer_metrics_port``.
"""

from __future__ import annotations

import sys

from broker.adapters.kafka.access import KafkaAccess
from broker.config import Settings
from broker.stack.worker import WorkerProcess


def sealing_off(settings: Settings) -> Settings:
    """``settings`` for a worker that leaves the sealing to a sealer process."""
    return settings.model_copy(update={"audit_sealer": False})


class SealerProcess(WorkerProcess):
    """One ``python -m broker sealer`` child with its log file."""

    ready_markers = ("sealing partition",)  # it holds a raw partition and read its chain head

    def __init__(self, settings: Settings, kafka: KafkaAccess, *, name: str = "sealer") -> None:
        super().__init__(settings, kafka, name=name)

    def argv(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "broker", "sealer"]
