"""Agent SDK: publish escalation requests and risk signals, await decisions.

Imports adapters, schemas.

Blocking (confluent-kafka); one client per agent identity. The client starts reading the
decision topic at its current end *before* it publishes, so a fast decision is never missed;
it believes only answers the broker signed (``trust``: the broker's chain of trust).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.adapters import tracing
from broker.adapters.crypto.jwe import decrypt, reply_keypair
from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import own_topic
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.edge import Record, Trust
from broker.adapters.kafka.follow import Follower
from broker.delivery.bounded import Bounded
from broker.errors import BrokerError, CommandRefused, DecisionTimeout
from broker.sdk.agent.identity import AgentIdentity, Rotator
from schemas import topics
from schemas.events import (
    CommandAnswered,
    DelegationDecided,
    DelegationRequested,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    GrantCommand,
    KeyAgeWarning,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RiskObserved,
    WireModel,
)

log = logging.getLogger("permbroker.sdk")
ROTATION_RETRY_S = 60
Decision = EscalationDecided | RenewalDecided | ReleaseDecided | DelegationDecided
Answer = Decision | EscalationPending | CommandAnswered | KeyAgeWarning


class Answers:
    """Answers read off the decision topic, held until someone asks: at most ``max_entries``,
    the oldest dropped first, so answers for other agents' requests never fill the memory."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._held: Bounded[tuple[str, str], Answer] = Bounded(max_entries)
        self._cond = threading.Condition()

    def _stalled(self) -> str:
        """Why no answer can come in (Kafka refuses the reader), '' when nothing is known."""
        return ""

    def _timeout(self, what: str, timeout: float, hint: str) -> DecisionTimeout:
        why = self._stalled()
        return DecisionTimeout(f"{what} within {timeout:.0f}s: "
                               + (f"{why}; restart the client once its ACLs allow it" if why
                                  else hint))

    @property
    def held(self) -> int:
        """Answers kept for callers that have not asked for them (at most the bound)."""
        with self._cond:
            return len(self._held)

    def on_record(self, record: Record) -> None:
        """Hold one accepted record's answer (anything else on the topic is ignored)."""
        event = record.event
        if isinstance(event, EscalationDecided | RenewalDecided | ReleaseDecided
                      | DelegationDecided):
            key = ("decision", event.request_id)
        elif isinstance(event, EscalationPending):
            key = ("pending", event.request_id)
        elif isinstance(event, CommandAnswered):
            key = ("answer", event.command_id)
        elif isinstance(event, KeyAgeWarning):
            key = ("key-warning", event.kid)
        else:
            return
        with self._cond:
            self._held.put(key, event)
            self._cond.notify_all()

    def wait(self, request_id: str, timeout: float) -> Decision:
        """The decision for ``request_id``; raises DecisionTimeout after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: ("decision", request_id) in self._held, timeout):
                raise self._timeout(f"no decision for request {request_id}", timeout,
                                    "is a worker running (permbroker worker) and reading the "
                                    "same Kafka cluster?")
            found = self._held.pop(("decision", request_id))
            assert isinstance(found, EscalationDecided | RenewalDecided | ReleaseDecided
                              | DelegationDecided)
            return found

    def wait_pending(self, request_id: str, timeout: float) -> EscalationPending | Decision:
        """The request's pending notice (held for approval), or its decision if that came first."""
        pending, decided = ("pending", request_id), ("decision", request_id)
        with self._cond:
            if not self._cond.wait_for(lambda: pending in self._held or decided in self._held,
                                       timeout):
                raise self._timeout(f"no answer for request {request_id}", timeout,
                                    "is a worker running (permbroker worker)?")
            found = self._held.pop(pending) or self._held.pop(decided)
            assert not isinstance(found, CommandAnswered | KeyAgeWarning | None)
            return found

    def key_warning(self, kid: str) -> KeyAgeWarning | None:
        """The broker's warning that key ``kid`` nears the policy's maximum age, if one came."""
        with self._cond:
            found = self._held.get(("key-warning", kid))
        return found if isinstance(found, KeyAgeWarning) else None

    def wait_answer(self, command_id: str, timeout: float) -> CommandAnswered:
        """The broker's answer to a command; DecisionTimeout after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: ("answer", command_id) in self._held, timeout):
                raise self._timeout(f"no answer to command {command_id}", timeout,
                                    "is a worker running, and was the command signed by a "
                                    "registered key? (permbroker audit tail --kind "
                                    "identity.rejected)")
            answer = self._held.pop(("answer", command_id))
            assert isinstance(answer, CommandAnswered)
            return answer



class DecisionWatcher(Answers):
    """Follows the decision topic from 'now' and hands each decision to whoever waits for it.

    Only answers the broker signed count (the decode edge checks them against ``trust``). An
    agent's watcher (``agent_id``) reads only answers keyed by that agent (and unkeyed ones):
    the other agents' decisions are passed over undecoded and unverified.
    """

    def __init__(self, kafka: KafkaAccess, *, trust: Trust, max_entries: int = 10_000,
                 agent_id: str | None = None, tenant: str = topics.DEFAULT_TENANT) -> None:
        super().__init__(max_entries)
        only = frozenset({agent_id.encode()}) if agent_id is not None else None
        # A tenant's agents and operators read its own topic; the broker's roles (operators,
        # the API) the shared one, every tenant's.
        role, of_user = topics.role_of(kafka.username)
        tenant = of_user if of_user != topics.DEFAULT_TENANT else tenant
        self.topic = own_topic(kafka, topics.DECISIONS.name, tenant) \
            if role in topics.TENANT_ROLES or tenant != topics.DEFAULT_TENANT \
            else topics.DECISIONS.name
        self._follower = Follower(kafka, self.topic, self.on_record, trust=trust,
                                  reader="decision-watcher", name="permbroker-decisions",
                                  start="end", only_keys=only)

    def _stalled(self) -> str:
        return self._follower.errors.refused

    def close(self) -> None:
        """Stop following the topic."""
        self._follower.close()


@dataclass(frozen=True)
class GrantToken:
    """A grant token for one resource service, and when it expires (never after the grant)."""

    token: str = field(repr=False)
    grant_id: str
    audience: str
    expires_at: datetime


class AgentClient:
    """What an agent uses to escalate and to report risk; acts only as ``agent_id``.

    Every message is signed with the agent's own key, read from its key store ``keys``
    (``AgentKeyStore.from_settings(settings)``: ``PERMBROKER_AGENT_KEY_DIR``); ``unsigned=True``
    is for brokers in the dev mode that accepts unsigned events (``PERMBROKER_ALLOW_UNSIGNED``)
    only. An agent of a tenant (with that tenant's Kafka user, ``agent@acme``, or
    ``tenant="acme"``) reads its decisions from its tenant's decision topic; with the plain
    ``agent`` user, from the default tenant's own when tenants are declared.
    """

    def __init__(
        self,
        agent_id: str,
        kafka: KafkaAccess,
        *,
        trust: Trust | None = None,
        watch_decisions: bool = True,
        keys: AgentKeyStore | None = None,
        unsigned: bool = False,
        auto_rotate: bool = True,
        tenant: str | None = None,
    ) -> None:
        if keys is None and not unsigned:
            raise ValueError(f"agent {agent_id} signs with its own key: pass keys= (its "
                             "AgentKeyStore), or unsigned=True for a dev-mode broker")
        self.agent_id = agent_id
        self.identity = None if keys is None or unsigned else AgentIdentity(agent_id, keys)
        signer = self.identity.sign if self.identity is not None else None
        self._publisher = Publisher(kafka, source=f"/agents/{agent_id}", signer=signer)
        if watch_decisions and trust is None:
            raise ValueError(f"agent {agent_id} believes only answers the broker signed: pass "
                             "trust= (JwksView.from_settings(settings, kafka).trust), or "
                             "watch_decisions=False")
        tenant = tenant or topics.role_of(kafka.username)[1]  # a tenant's user: its tenant
        self._watcher = DecisionWatcher(kafka, trust=trust, agent_id=agent_id, tenant=tenant) \
            if watch_decisions and trust is not None else None
        self._rotator: Rotator | None = None
        # On the broker's key-age warning, rotate before the next message (never after the
        # limit: the old key would be refused and the request with it).
        self.auto_rotate = auto_rotate
        self.rotations = 0
        self._retry_rotation_at = 0.0

    def key_warning(self, kid: str | None = None) -> KeyAgeWarning | None:
        """The broker's warning that key ``kid`` (default: the one in use) nears the policy's
        maximum key age, if one came."""
        kid = kid or (self.identity.kid if self.identity is not None else None)
        return self._watcher.key_warning(kid) if self._watcher and kid else None

    def _publish(self, topic: str, event: WireModel) -> None:
        """Publish signed, rotating first if the broker warned that the key grows old (a failed
        rotation is retried a minute later: the warned key is still accepted until then)."""
        now = time.monotonic()
        if self.auto_rotate and now >= self._retry_rotation_at and self.key_warning():
            try:
                self.rotate_key()
            except BrokerError as exc:
                self._retry_rotation_at = now + ROTATION_RETRY_S
                log.warning("agent %s: key rotation on the broker's warning failed (retrying "
                            "in %ds): %s", self.agent_id, ROTATION_RETRY_S, exc)
        # The root of the request's trace (when tracing is on): the record carries its context.
        with tracing.span("permbroker.agent.publish", attributes={
                "permbroker.agent_id": self.agent_id, "permbroker.event_id": event.event_id,
                "messaging.destination.name": topic}):
            self._publisher.publish(topic, event)

    def send(self, request: EscalationRequested) -> None:
        """Publish a request built by the caller (must be this agent's own)."""
        if request.agent_id != self.agent_id:
            raise ValueError(f"client of {self.agent_id} cannot send for {request.agent_id}")
        self._publish(topics.ESCALATIONS.name, request)

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
        """Ask for scopes and wait for the broker's decision (granted or denied, with reasons).

        The request is valid until the wait ends (``timeout``): one the broker would decide
        later is denied (rule ``request-expired``), never granted to a client that gave up.
        """
        now = datetime.now(UTC)
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
            requested_at=now,
            valid_until=now + timedelta(seconds=timeout),
        )
        self.send(request)
        return self.await_decision(request.request_id, timeout)

    def await_decision(self, request_id: str, timeout: float = 30.0) -> EscalationDecided:
        """Wait for the decision on a request this client sent."""
        decision = self._await(request_id, timeout)
        if not isinstance(decision, EscalationDecided):
            raise TypeError(f"{request_id} was answered by a {type(decision).__name__}")
        return decision

    def await_pending(self, request_id: str,
                      timeout: float = 30.0) -> EscalationPending | EscalationDecided:
        """The first answer: ``EscalationPending`` when held for approval (then wait for the
        final decision with ``await_decision``), else the decision itself."""
        if self._watcher is None:
            raise ValueError("this client was created with watch_decisions=False")
        answer = self._watcher.wait_pending(request_id, timeout)
        if not isinstance(answer, EscalationPending | EscalationDecided):
            raise TypeError(f"{request_id} was answered by a {type(answer).__name__}")
        return answer

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
        self._publish(topics.ESCALATIONS.name, request)
        decision = self._await(request.request_id, timeout)
        assert isinstance(decision, RenewalDecided)
        return decision

    def release(self, grant_id: str, *, reason: str = "", timeout: float = 30.0) -> ReleaseDecided:
        """Give one of this agent's grants back before it expires."""
        request = ReleaseRequested(
            request_id=f"release-{uuid.uuid4()}", agent_id=self.agent_id, grant_id=grant_id,
            reason=reason, requested_at=datetime.now(UTC),
        )
        self._publish(topics.ESCALATIONS.name, request)
        decision = self._await(request.request_id, timeout)
        assert isinstance(decision, ReleaseDecided)
        return decision

    def delegate(
        self,
        grant_id: str,
        to: str,
        scopes: tuple[str, ...] | list[str],
        *,
        duration_s: int,
        reason: str,
        resources: tuple[str, ...] | list[str] = (),
        timeout: float = 30.0,
    ) -> DelegationDecided:
        """Hand part of one of this agent's grants to agent ``to``; policy decides.

        The child grant's scopes and resources are within the parent's and it expires no later
        than the parent (the answer names what was narrowed or clamped, and the rule of any
        denial); it ends when the parent ends. Its grant tokens name this agent in ``act``.
        A rule may hold it for approval: this waits up to ``timeout`` for the final answer
        (``send_delegation`` and ``await_pending`` see the pending notice first).
        """
        request_id = self.send_delegation(grant_id, to, scopes, duration_s=duration_s,
                                          reason=reason, resources=resources)
        return self.await_delegation(request_id, timeout)

    def send_delegation(self, grant_id: str, to: str, scopes: tuple[str, ...] | list[str], *,
                        duration_s: int, reason: str,
                        resources: tuple[str, ...] | list[str] = ()) -> str:
        """Publish a delegation request without waiting; its request id."""
        request = DelegationRequested(
            request_id=f"delegate-{uuid.uuid4()}", agent_id=self.agent_id,
            parent_grant_id=grant_id, delegate_id=to, scopes=tuple(scopes),
            resources=tuple(resources), duration_s=duration_s, reason=reason,
            requested_at=datetime.now(UTC),
        )
        self._publisher.publish(topics.ESCALATIONS.name, request)
        return request.request_id

    def await_delegation(self, request_id: str, timeout: float = 30.0) -> DelegationDecided:
        """Wait for the decision on a delegation this client sent."""
        decision = self._await(request_id, timeout)
        if not isinstance(decision, DelegationDecided):
            raise TypeError(f"{request_id} was answered by a {type(decision).__name__}")
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
        self._publish(topics.RISK.name, signal)
        return signal

    def _answer(self, command_id: str, timeout: float) -> CommandAnswered:
        if self._watcher is None:
            raise ValueError("this client was created with watch_decisions=False")
        return self._watcher.wait_answer(command_id, timeout)

    def _grant_command(self, grant_id: str, action: str, timeout: float,
                       **fields: object) -> tuple[GrantCommand, CommandAnswered]:
        cmd = GrantCommand.model_validate({
            "command_id": f"{action}-{uuid.uuid4()}", "agent_id": self.agent_id,
            "grant_id": grant_id, "action": action, "issued_at": datetime.now(UTC), **fields})
        self._publish(topics.GRANT_COMMANDS.name, cmd)
        answer = self._answer(cmd.command_id, timeout)
        if answer.outcome != "done":
            raise CommandRefused(f"{action} of grant {grant_id} refused: {answer.reason}",
                                 rule=answer.rule)
        return cmd, answer

    def grant_token(self, grant_id: str, audience: str, *, timeout: float = 30.0,
                    owner: str | None = None) -> GrantToken:
        """A short-lived token for one of this agent's grants, for the service ``audience``.

        The broker encrypts the token to a one-time key only this call holds; call again to
        refresh it while the grant lives (the answer says why when it no longer does).
        """
        private, public = reply_keypair()
        _cmd, answer = self._grant_command(grant_id, "token", timeout, audience=audience,
                                           reply_key=public, grant_agent_id=owner)
        if answer.token is None or answer.token_expires_at is None:
            raise CommandRefused(f"the broker sent no token for grant {grant_id}")
        token = decrypt(answer.token, private).decode()
        return GrantToken(token, grant_id, audience, answer.token_expires_at)

    def rotate_key(self, *, overlap_s: int | None = None, timeout: float = 30.0) -> str:
        """Replace the agent's key now (see ``broker.sdk.agent.identity``); the new kid."""
        if self.identity is None:
            raise ValueError("an unsigned client has no key to rotate")
        cmd = self.identity.rotation_command(overlap_s)
        self._publisher.publish(topics.REGISTRY.name, cmd)
        kid = self.identity.settle(self._answer(cmd.command_id, timeout))
        self.rotations += 1
        return kid

    def start_rotation(self, every_s: float, *, overlap_s: int | None = None) -> Rotator:
        """Rotate the key every ``every_s`` seconds in the background until close()."""
        self._rotator = Rotator(lambda: self.rotate_key(overlap_s=overlap_s), every_s)
        return self._rotator

    def close(self) -> None:
        """Release the client's Kafka connections (and stop rotating)."""
        if self._rotator is not None:
            self._rotator.stop()
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
