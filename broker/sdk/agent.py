"""Agent SDK: publish escalation requests and risk signals, await decisions.

Imports adapters, schemas.

Blocking (confluent-kafka); one client per agent identity. The client starts reading the
decision topic at its current end *before* it publishes, so a fast decision is never missed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from confluent_kafka import TopicPartition

from broker.adapters.bus import Publisher, consumer, end_offsets, to_record
from broker.errors import DecisionTimeout
from schemas import topics
from schemas.events import (
    EscalationDecided,
    EscalationRequested,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RiskObserved,
)

Decision = EscalationDecided | RenewalDecided | ReleaseDecided


class DecisionWatcher:
    """Follows the decision topic from 'now' and hands each decision to whoever waits for it."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = consumer(bootstrap)
        ends = end_offsets(self._consumer, topics.DECISIONS.name)
        self._consumer.assign(
            [TopicPartition(topics.DECISIONS.name, p, o) for p, o in ends.items()]
        )
        self._decisions: dict[str, Decision] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="permbroker-decisions", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.1)
            if msg is None or msg.error():
                continue
            event = to_record(msg).event
            if isinstance(event, EscalationDecided | RenewalDecided | ReleaseDecided):
                with self._cond:
                    self._decisions[event.request_id] = event
                    self._cond.notify_all()
        self._consumer.close()

    def wait(self, request_id: str, timeout: float) -> Decision:
        """The decision for ``request_id``; raises DecisionTimeout after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: request_id in self._decisions, timeout):
                raise DecisionTimeout(
                    f"no decision for request {request_id} within {timeout:.0f}s: is a worker "
                    "running (permbroker worker) and reading the same Kafka cluster?"
                )
            return self._decisions.pop(request_id)

    def close(self) -> None:
        """Stop following the topic."""
        self._stop.set()
        self._thread.join(timeout=5)


class AgentClient:
    """What an agent uses to escalate and to report risk; acts only as ``agent_id``."""

    def __init__(self, agent_id: str, bootstrap: str, *, watch_decisions: bool = True) -> None:
        self.agent_id = agent_id
        self._publisher = Publisher(bootstrap, source=f"/agents/{agent_id}")
        self._watcher = DecisionWatcher(bootstrap) if watch_decisions else None

    def send(self, request: EscalationRequested) -> None:
        """Publish a request built by the caller (must be this agent's own)."""
        if request.agent_id != self.agent_id:
            raise ValueError(f"client of {self.agent_id} cannot send for {request.agent_id}")
        self._publisher.publish(topics.ESCALATIONS.name, request)

    def request_escalation(
        self,
        scopes: tuple[str, ...] | list[str],
        *,
        duration_s: int,
        reason: str,
        confidence: float,
        resources: tuple[str, ...] | list[str] = (),
        risk_score: float = 0.0,
        case_id: str | None = None,
        signals: Mapping[str, str | float | int | bool] | None = None,
        timeout: float = 30.0,
    ) -> EscalationDecided:
        """Ask for scopes and wait for the broker's decision (granted or denied, with reasons)."""
        request = EscalationRequested(
            request_id=f"req-{uuid.uuid4()}",
            agent_id=self.agent_id,
            scopes=tuple(scopes),
            resources=tuple(resources),
            duration_s=duration_s,
            reason=reason,
            case_id=case_id,
            confidence=confidence,
            risk_score=risk_score,
            signals=dict(signals or {}),
            requested_at=datetime.now(UTC),
        )
        self.send(request)
        return self.await_decision(request.request_id, timeout)

    def await_decision(self, request_id: str, timeout: float = 30.0) -> EscalationDecided:
        """Wait for the decision on a request this client sent."""
        decision = self._await(request_id, timeout)
        if not isinstance(decision, EscalationDecided):
            raise TypeError(f"{request_id} was answered by a {type(decision).__name__}")
        return decision

    def _await(self, request_id: str, timeout: float) -> Decision:
        if self._watcher is None:
            raise ValueError("this client was created with watch_decisions=False")
        return self._watcher.wait(request_id, timeout)

    def renew(
        self,
        grant_id: str,
        *,
        duration_s: int,
        reason: str,
        confidence: float,
        risk_score: float = 0.0,
        signals: Mapping[str, str | float | int | bool] | None = None,
        timeout: float = 30.0,
    ) -> RenewalDecided:
        """Ask to extend one of this agent's grants, with fresh evidence; policy decides.

        The answer states the new absolute expiry, or why not (naming the rule), and carries
        the consistency token of the renewal.
        """
        request = RenewalRequested(
            request_id=f"renew-{uuid.uuid4()}", agent_id=self.agent_id, grant_id=grant_id,
            duration_s=duration_s, reason=reason, confidence=confidence, risk_score=risk_score,
            signals=dict(signals or {}), requested_at=datetime.now(UTC),
        )
        self._publisher.publish(topics.ESCALATIONS.name, request)
        decision = self._await(request.request_id, timeout)
        assert isinstance(decision, RenewalDecided)
        return decision

    def release(self, grant_id: str, *, reason: str = "", timeout: float = 30.0) -> ReleaseDecided:
        """Give one of this agent's grants back before it expires."""
        request = ReleaseRequested(
            request_id=f"release-{uuid.uuid4()}", agent_id=self.agent_id, grant_id=grant_id,
            reason=reason, requested_at=datetime.now(UTC),
        )
        self._publisher.publish(topics.ESCALATIONS.name, request)
        decision = self._await(request.request_id, timeout)
        assert isinstance(decision, ReleaseDecided)
        return decision

    def report_risk(
        self,
        *,
        kind: str,
        severity: float,
        detail: str = "",
        subject_agent_id: str | None = None,
        resource: str | None = None,
    ) -> RiskObserved:
        """Publish a risk signal (about another agent, this one, or a resource)."""
        signal = RiskObserved(
            signal_id=f"sig-{uuid.uuid4()}",
            subject_agent_id=subject_agent_id,
            resource=resource,
            kind=kind,
            severity=severity,
            source=f"agent:{self.agent_id}",
            detail=detail,
            observed_at=datetime.now(UTC),
        )
        self._publisher.publish(topics.RISK.name, signal)
        return signal

    def close(self) -> None:
        """Release the client's Kafka connections."""
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
