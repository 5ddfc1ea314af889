"""Operator SDK: revoke an agent and learn where the revocation landed. Imports adapters, schemas.

A revocation is an operator risk signal that workers apply like any other; the worker's audit
record of the signal names the revoked grants and the consistency token of the revocation on
every grant topic. ``revoke(wait=True)`` reads that record back, so the caller can ask a view
``allows(..., at_least=token)`` and be sure the answer reflects the revocation.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from broker.adapters.bus import Publisher, consumer, end_offsets, to_record
from broker.errors import DecisionTimeout
from schemas import topics
from schemas.events import OPERATOR_REVOKE_KIND, AuditRecord, RiskObserved


@dataclass(frozen=True)
class Revocation:
    """A revocation as the worker applied it."""

    signal_id: str
    agent_id: str
    grant_ids: tuple[str, ...]
    revoked_at: datetime
    consistency_token: str | None
    reasons: tuple[str, ...]


def operator_signal(agent_id: str, reason: str, operator: str) -> RiskObserved:
    """The risk signal that revokes every grant of ``agent_id`` (and what is audited of it)."""
    return RiskObserved(
        signal_id=f"op-{uuid.uuid4()}", subject_agent_id=agent_id, kind=OPERATOR_REVOKE_KIND,
        severity=1.0, source=f"operator:{operator}", detail=reason,
        observed_at=datetime.now(UTC),
    )


class AuditWatcher:
    """Follows the audit topic from now; hands over the record about a given subject."""

    def __init__(self, bootstrap: str) -> None:
        self._c = consumer(bootstrap)
        ends = end_offsets(self._c, topics.AUDIT.name)
        self._c.assign([TopicPartition(topics.AUDIT.name, p, o) for p, o in ends.items()])
        self._found: dict[str, AuditRecord] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permbroker-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._c.poll(0.1)
            if msg is None or msg.error():
                continue
            rec = to_record(msg).event
            if isinstance(rec, AuditRecord) and rec.kind == "risk.observed":
                with self._cond:
                    self._found[rec.subject_id] = rec
                    self._cond.notify_all()
        self._c.close()

    def wait(self, subject_id: str, timeout: float) -> AuditRecord:
        """The audit record of ``subject_id``; DecisionTimeout after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: subject_id in self._found, timeout):
                raise DecisionTimeout(
                    f"the revocation {subject_id} was published but no worker applied it within "
                    f"{timeout:.0f}s: is a worker running (permbroker worker)?"
                )
            return self._found.pop(subject_id)

    def close(self) -> None:
        """Stop following."""
        self._stop.set()
        self._thread.join(timeout=5)


def revocation_of(signal: RiskObserved, audit: AuditRecord) -> Revocation:
    """The revocation a worker's audit record of ``signal`` describes."""
    token = audit.inputs.get("consistency_token")
    grants = audit.inputs.get("revoked_grants")
    return Revocation(
        signal_id=signal.signal_id,
        agent_id=signal.subject_agent_id or "",
        grant_ids=tuple(str(g) for g in grants) if isinstance(grants, list) else (),
        revoked_at=audit.occurred_at,
        consistency_token=token if isinstance(token, str) else None,
        reasons=audit.reasons,
    )


def revoke(
    bootstrap: str, agent_id: str, reason: str, *, operator: str, timeout: float = 30.0,
    publisher: Publisher | None = None, watcher: AuditWatcher | None = None,
) -> Revocation:
    """Revoke every grant of ``agent_id`` and wait until a worker applied it."""
    own = watcher is None
    watcher = watcher or AuditWatcher(bootstrap)
    try:
        signal = operator_signal(agent_id, reason, operator)
        pub = publisher or Publisher(bootstrap, source=f"/operators/{operator}")
        pub.publish(topics.RISK.name, signal)
        return revocation_of(signal, watcher.wait(signal.signal_id, timeout))
    finally:
        if own:
            watcher.close()
