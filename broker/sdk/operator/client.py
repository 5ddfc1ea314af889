"""Operator SDK: revoke an agent, change the registry. Imports adapters, sdk, config, schemas.

A revocation is an operator risk signal that workers apply like any other; the worker's audit
record of the signal names the revoked grants and the consistency token of the revocation on
every grant topic. ``revoke(wait=True)`` reads that record back, so the caller can ask a view
``allows(..., at_least=token)`` and be sure the answer reflects the revocation.

Everything an operator sends is signed with the operator's key (``Settings.key_path
("operator")``): agent credentials cannot revoke another agent or change the registry.
``OperatorClient`` runs registry commands (register, update, suspend, resume, revoke a key,
decommission, reinstate, rotate the broker's keys) and revokes single grants, and waits for the
broker's answer; a refusal raises ``CommandRefused`` with the reason. Enrollment tokens are
signed locally.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from broker.adapters.crypto.enrollment import issue_enrollment
from broker.adapters.crypto.keystore import load_operator
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.edge import Record, Trust
from broker.adapters.kafka.follow import Follower
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.delivery.bounded import Bounded
from broker.errors import CommandRefused, DecisionTimeout
from broker.sdk.agent.client import DecisionWatcher
from schemas import topics
from schemas.events import (
    OPERATOR_REVOKE_KIND,
    AgentCommand,
    AgentProfile,
    AuditRecord,
    CommandAnswered,
    GrantCommand,
    PublicJwk,
    RiskObserved,
)


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
    """Follows the sealed audit topic from now; hands over the record about a given subject.

    Only records the broker signed count; at most ``max_entries`` wait for a caller.
    """

    def __init__(self, kafka: KafkaAccess, *, trust: Trust, max_entries: int = 10_000) -> None:
        self._found: Bounded[str, AuditRecord] = Bounded(max_entries)
        self._cond = threading.Condition()
        self._follower = Follower(kafka, topics.audit_for(kafka.username).name,
                                  self._on_record, trust=trust,
                                  reader="audit-watcher", name="permbroker-audit", start="end")

    def _on_record(self, record: Record) -> None:
        rec = record.event
        if isinstance(rec, AuditRecord) and rec.kind == "risk.observed":
            with self._cond:
                self._found.put(rec.subject_id, rec)
                self._cond.notify_all()

    def wait(self, subject_id: str, timeout: float) -> AuditRecord:
        """The audit record of ``subject_id``; DecisionTimeout after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: subject_id in self._found, timeout):
                why = self._follower.errors.refused or "is a worker running (permbroker worker)?"
                raise DecisionTimeout(
                    f"the revocation {subject_id} was published but no worker applied it within "
                    f"{timeout:.0f}s: {why}"
                )
            found = self._found.pop(subject_id)
            assert found is not None
            return found

    def close(self) -> None:
        """Stop following."""
        self._follower.close()


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


def operator_publisher(kafka: KafkaAccess, source: str, settings: Settings) -> Publisher:
    """A producer that signs everything with this operator's key (KeyFileError if none)."""
    principal, key = load_operator(settings.key_path("operator"))
    return Publisher(kafka, source=source,
                     signer=lambda m: sign_message(m, key, principal))


def revoke(
    settings: Settings, kafka: KafkaAccess, agent_id: str, reason: str, *, operator: str,
    trust: Trust, timeout: float = 30.0, publisher: Publisher | None = None,
    watcher: AuditWatcher | None = None,
) -> Revocation:
    """Revoke every grant of ``agent_id`` and wait until a worker applied it."""
    own = watcher is None
    watcher = watcher or AuditWatcher(kafka, trust=trust)
    try:
        signal = operator_signal(agent_id, reason, operator)
        pub = publisher or operator_publisher(kafka, f"/operators/{operator}", settings)
        pub.publish(topics.RISK.name, signal)
        return revocation_of(signal, watcher.wait(signal.signal_id, timeout))
    finally:
        if own:
            watcher.close()


class OperatorClient:
    """One operator's signed actions on the registry, the broker's keys and agents' grants."""

    def __init__(self, settings: Settings, kafka: KafkaAccess, *,
                 trust: Trust | None = None) -> None:
        self.principal, self._key = load_operator(settings.key_path("operator"))
        self._publisher = operator_publisher(
            kafka, f"/operators/{self.principal.split(':', 1)[1]}", settings)
        # The broker's answers are believed only when it signed them: with no trust given, the
        # client follows the chain of trust from the settings' anchor itself.
        self._jwks = JwksView.from_settings(settings, kafka) if trust is None else None
        self.trust: Trust = trust if trust is not None else self._own_trust()
        self._watcher = DecisionWatcher(kafka, trust=self.trust,
                                        max_entries=settings.decisions_kept)

    def _own_trust(self) -> Trust:
        assert self._jwks is not None
        return self._jwks.trust

    def _command(self, action: str, agent_id: str | None, reason: str,
                 **fields: object) -> AgentCommand:
        return AgentCommand.model_validate({
            "command_id": f"op-{action}-{uuid.uuid4()}", "action": action, "agent_id": agent_id,
            "reason": reason, "issued_at": datetime.now(UTC), **fields})

    def run(self, command: AgentCommand, *, timeout: float = 30.0) -> CommandAnswered:
        """Publish one signed command and wait for the answer; CommandRefused if refused."""
        self._publisher.publish(topics.REGISTRY.name, command)
        return self._settle(command, timeout)

    def run_many(self, commands: Iterable[AgentCommand], *,
                 timeout: float = 60.0) -> list[CommandAnswered]:
        """Publish a batch at once, then wait for every answer."""
        batch = list(commands)
        self._publisher.publish_many(topics.REGISTRY.name, batch)
        return [self._settle(c, timeout) for c in batch]

    def _settle(self, command: AgentCommand | GrantCommand, timeout: float) -> CommandAnswered:
        try:
            answer = self._watcher.wait_answer(command.command_id, timeout)
        except DecisionTimeout as exc:
            raise DecisionTimeout(f"{command.action} {command.agent_id or ''}: {exc}") from exc
        if answer.outcome != "done":
            raise CommandRefused(f"{command.action} refused: {answer.reason}", rule=answer.rule)
        return answer

    def register(self, profile: AgentProfile, key: PublicJwk, *,
                 reason: str = "registered by an operator") -> CommandAnswered:
        """Register an agent with the public half of the key it generated itself."""
        return self.run(self.register_command(profile, key, reason=reason))

    def register_command(self, profile: AgentProfile, key: PublicJwk, *,
                         reason: str = "registered by an operator") -> AgentCommand:
        """The command that registers ``profile`` with ``key`` (for ``run_many``)."""
        return self._command("register", profile.agent_id, reason, profile=profile, key=key)

    def update(self, profile: AgentProfile, *, reason: str) -> CommandAnswered:
        """Change an agent's profile (a new model version or digest revokes per policy)."""
        return self.run(self._command("update", profile.agent_id, reason, profile=profile))

    def suspend(self, agent_id: str, *, reason: str) -> CommandAnswered:
        """Suspend an agent: every grant is revoked and it may not act until resumed."""
        return self.run(self._command("suspend", agent_id, reason))

    def resume(self, agent_id: str, *, reason: str) -> CommandAnswered:
        """Let a suspended or quarantined agent act again (revoked grants stay revoked)."""
        return self.run(self._command("resume", agent_id, reason))

    def decommission(self, agent_id: str, *, reason: str) -> CommandAnswered:
        """Retire an agent for good: every grant revoked, every key retired, the baseline
        withdrawn; the record and the audit stay, and the id registers again only when
        reinstated (``reinstate``)."""
        return self.run(self._command("decommission", agent_id, reason))

    def renew(self, agent_id: str, *, reason: str) -> CommandAnswered:
        """Renew the agent's registration (it lapses under ``lifecycle.registration_ttl``)."""
        return self.run(self._command("renew", agent_id, reason))

    def reinstate(self, agent_id: str, key: PublicJwk, *, reason: str) -> CommandAnswered:
        """Bring a decommissioned agent id back with a new key (its old keys stay revoked)."""
        return self.run(self._command("reinstate", agent_id, reason, key=key))

    def revoke_key(self, agent_id: str, kid: str, *, reason: str) -> CommandAnswered:
        """Revoke a compromised key: its grants are revoked and the agent quarantined."""
        return self.run(self._command("revoke_key", agent_id, reason, kid=kid))

    def rotate_broker_key(self, *, overlap_s: int | None = None,
                          reason: str = "scheduled rotation") -> CommandAnswered:
        """Have the workers add a new token-signing key; the old one verifies for the overlap."""
        return self.run(self._command("rotate_broker_key", None, reason, overlap_s=overlap_s))

    def enroll(self, profile: AgentProfile, *, ttl_s: int = 3600) -> tuple[str, datetime]:
        """An enrollment token with which the agent registers its own key (any language)."""
        return issue_enrollment(self._key, self.principal, profile, now=datetime.now(UTC),
                                ttl_s=ttl_s)

    def report_risk(self, *, kind: str, severity: float, detail: str = "",
                    subject_agent_id: str | None = None,
                    resource: str | None = None) -> RiskObserved:
        """A risk signal about any agent, as a monitoring service with operator credentials
        (an agent's own key may only report about itself)."""
        signal = RiskObserved(
            signal_id=f"sig-{uuid.uuid4()}", subject_agent_id=subject_agent_id,
            resource=resource, kind=kind, severity=severity, source=self.principal,
            detail=detail, observed_at=datetime.now(UTC))
        self._publisher.publish(topics.RISK.name, signal)
        return signal

    def revoke_grant(self, agent_id: str, grant_id: str, *, reason: str,
                     timeout: float = 30.0) -> CommandAnswered:
        """Revoke one grant and wait until a worker did (CommandRefused with the reason when it
        is not an active grant of ``agent_id``). The answer's ``answered_at`` is the revocation
        time and its ``reason`` the ``grant.revoked`` reason, naming this operator."""
        command = GrantCommand(
            command_id=f"op-revoke-{uuid.uuid4()}", agent_id=agent_id, grant_id=grant_id,
            action="revoke", reason=reason, issued_at=datetime.now(UTC))
        self._publisher.publish(topics.GRANT_COMMANDS.name, command)
        return self._settle(command, timeout)

    def revoke_grants(self, agent_id: str, *, reason: str) -> RiskObserved:
        """Revoke every grant of an agent (an operator revocation signal, signed by this
        operator's key: the audit names this operator)."""
        signal = operator_signal(agent_id, reason, self.principal.split(":", 1)[1])
        self._publisher.publish(topics.RISK.name, signal)
        return signal

    def close(self) -> None:
        """Stop reading answers."""
        self._watcher.close()
        if self._jwks is not None:
            self._jwks.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
