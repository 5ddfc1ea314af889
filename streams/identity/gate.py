"""The identity gate: every agent event is verified before policy sees it. Imports broker, schemas.

For each escalation, risk signal and command: read the ``ce_signature``, find the key by kid (an
agent's key in the registry, an operator's or a resource service's), verify it with that key's
own algorithm, check that the claims bind this very message and were made within the window
around Kafka's append time, that the key was valid then, that the signer may act for whom the
event names, that the agent is active, and that this signature was not used at another offset
before (replay; the same offset again is a redelivery). A record a service signed (the HTTP API
relaying a call) counts only with the assertion of the principal it relays for (``pb_assertion``):
that assertion is verified with the principal's own key and the event is judged as signed by
that principal, with every check above; its nonce is spent here. A refusal is audited as
``identity.rejected`` with a distinct rule ``identity:<code>`` and the event goes no further.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker.adapters.crypto import signing
from broker.adapters.crypto.assertions import Identities, Verified
from broker.adapters.crypto.keystore import OperatorDirectory
from broker.adapters.crypto.trust import ServiceDirectory
from broker.adapters.kafka.registry_view import RegistryView
from broker.adapters.redis.identity import IdentityStore
from broker.config import Settings
from broker.delivery.bounded import Bounded
from broker.errors import BusError
from broker.identity.answers import rejection_audit
from broker.identity.lifecycle import key_age_problem, key_age_warning, registration_problem
from broker.identity.rules import (
    EventClaims,
    Principal,
    Reason,
    Rejection,
    agent_usable,
    authorize_event,
    check_binding,
    find_key,
    is_agent_request,
    is_operator,
    key_usable,
)
from broker.identity.tenants import DEFAULT_TENANT, out_of_scope
from broker.policy.lifecycle import AgentLifecycle
from schemas.events import (
    AGENT_ID_PATTERN,
    AgentCommand,
    AgentProfile,
    ApprovalVoted,
    DelegationRequested,
    EscalationRequested,
    GrantCommand,
    KeyAgeWarning,
    PublicJwk,
    ReleaseRequested,
    RenewalRequested,
    RiskObserved,
    ScopeDenial,
    WireModel,
)
from schemas.signing import ASSERTION_HEADER
from streams.worker import Incoming

log = logging.getLogger("permbroker.identity")
NONCE_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Admitted:
    """An admitted event: who signed it and, for an authentic agent that may not act, why."""

    signer: Principal
    refusal: Rejection | None = None
    redelivered: bool = False  # this very message (same offset) was admitted before

    def denial(self) -> ScopeDenial | None:
        """An outside denial of every scope (the refusal as the rule) when it may not act."""
        r = self.refusal
        return ScopeDenial(scope="*", rule=r.rule, reason=r.detail) if r is not None else None


def claimed_agent(event: WireModel | None) -> str | None:
    """The agent an event speaks for or about (for audit and the unsigned dev mode)."""
    if isinstance(event, EscalationRequested | RenewalRequested | ReleaseRequested | GrantCommand
                  | AgentCommand | DelegationRequested):
        return event.agent_id
    if isinstance(event, RiskObserved):
        return event.subject_agent_id
    if isinstance(event, ApprovalVoted):  # a verifier agent acts for itself; operators: None
        return None if is_operator(event.approver) else event.approver
    return None


class IdentityGate:
    """Verifies events against the registry and the operators' keys; audits every refusal."""

    def __init__(self, operators: OperatorDirectory, services: ServiceDirectory,
                 store: IdentityStore, settings: Settings,
                 audit: Callable[..., Awaitable[None]], count: Callable[[str], None], *,
                 classes: dict[str, tuple[tuple[str, ...], tuple[str, ...]]],
                 lifecycle: AgentLifecycle | None = None) -> None:
        self._registry: RegistryView | None = None
        self.ready = asyncio.Event()
        self.operators = operators
        self.services = services  # resource services; the HTTP API relays with its key
        self.store = store
        self.settings = settings
        self._audit = audit  # the worker's audit writer (raw audit topic, redaction)
        self._count = count
        self.classes = classes  # agent class -> (baseline, ceiling), from the policy
        # The same for each other tenant, from its own bundle (set by the composition root).
        self.tenant_classes: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {}
        # Operators scoped to tenants (operator tenants file); one not in it: every tenant.
        self.operator_tenants: dict[str, frozenset[str]] = {}
        self.lifecycle = lifecycle or AgentLifecycle()  # key age and registration limits
        # Tells an agent its key nears the maximum age (set by the shell; once per key here).
        self.warn: Callable[[KeyAgeWarning], Awaitable[None]] | None = None
        self._warned: Bounded[str, None] = Bounded(100_000)

    @property
    def registry(self) -> RegistryView:
        """The registry view (set once it has caught up with the agents topic)."""
        if self._registry is None:
            raise RuntimeError("identity gate used before the registry was loaded")
        return self._registry

    def start(self, registry: RegistryView) -> None:
        """Open the gate with a registry view that has caught up."""
        self._registry = registry
        self.ready.set()

    async def sync(self) -> None:
        """Catch the registry view up with the agents topic; BusError (retried) if it cannot."""
        if not await asyncio.to_thread(self.registry.sync, 5.0):
            raise BusError("the agent registry view could not catch up with Kafka")

    def classes_of(self, tenant: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """A tenant's classes are its own: an agent of a tenant without a bundle gets none."""
        return self.classes if tenant == DEFAULT_TENANT else self.tenant_classes.get(tenant, {})

    def profile(self, agent_id: str) -> AgentProfile | None:
        """The registered profile, with baseline and ceiling from the policy's class."""
        record = self.registry.get(agent_id)
        if record is None:
            return None
        classes = self.classes_of(record.profile.tenant)
        baseline, ceiling = classes.get(record.profile.agent_class, ((), ()))
        return record.profile.model_copy(update={"baseline": baseline, "ceiling": ceiling})

    def standing(self, agent_id: str) -> ScopeDenial | None:
        """Why an agent may not be granted anything now (unknown, suspended, quarantined)."""
        record = self.registry.get(agent_id)
        problem = agent_usable(record) if record is not None else \
            Rejection(Reason.UNKNOWN_AGENT, f"agent {agent_id} is not registered")
        return ScopeDenial(scope="*", rule=problem.rule, reason=problem.detail) \
            if problem is not None else None

    async def admit(self, msg: Incoming, event: WireModel) -> Admitted | None:
        """Admit the event (possibly with a refusal for policy to turn into a denial) or reject."""
        verdict, signer = await self.check(msg, event)
        if isinstance(verdict, Rejection):
            await self.reject(msg, event, verdict, signer)
            return None
        unsigned = verdict.signer.kind == "agent" and not verdict.signer.kid  # dev mode
        agent = claimed_agent(event)
        if unsigned and agent is not None and self.registry.get(agent) is not None:
            await self.store.mark_acted(verdict.signer.id, msg.received_at)  # never a stranger
        return verdict

    def _out_of_scope(self, signer: Principal, event: WireModel) -> Rejection | None:
        """An operator scoped to tenants acting on an agent of another tenant (or the broker)."""
        if signer.kind != "operator" or signer.id not in self.operator_tenants:
            return None
        agent = event.agent_id if isinstance(event, ApprovalVoted) else claimed_agent(event)
        if isinstance(event, GrantCommand):
            agent = event.grant_agent_id or event.agent_id
        record = self.registry.get(agent) if agent is not None else None
        tenant = record.profile.tenant if record is not None else None
        if tenant is None and isinstance(event, AgentCommand) and event.profile is not None:
            tenant = event.profile.tenant  # a registration names the tenant it registers into
        problem = out_of_scope(signer.id, self.operator_tenants, agent, tenant)
        return Rejection(Reason.NOT_PERMITTED, problem) if problem is not None else None

    async def check(self, msg: Incoming, event: WireModel | None, key: PublicJwk | None = None
                    ) -> tuple[Admitted | Rejection, Principal | None]:
        """The verdict, and the signer once the signature verified (to name who was refused).

        ``key`` verifies a self-registration (signed by the key it registers).
        """
        await self.ready.wait()
        sig = signing.presented(msg.headers)
        if isinstance(sig, Rejection):
            return sig, None
        if sig is None:
            return await self._stranger(event) or self._unsigned(event), None
        found = await self._key(sig.kid, key)
        if isinstance(found, Rejection):
            return await self._stranger(event) or found, None
        signer, jwk = found
        claims = signing.verify_claims(sig, jwk)
        if isinstance(claims, Rejection):
            return claims, None
        verdict = await self._verified(msg, event, signer, claims)
        if not isinstance(verdict, Rejection) and event is not None:
            # An operator of another tenant (also when relayed by the API): refused, audited.
            verdict = self._out_of_scope(verdict.signer, event) or verdict
        return verdict, (signer if signer.id else None)

    async def _verified(self, msg: Incoming, event: WireModel | None, signer: Principal,
                        claims: EventClaims) -> Admitted | Rejection:
        problem = self._binding(msg, signer, claims)
        nonce, until = claims.jti, msg.received_at + timedelta(
            seconds=self.settings.signature_max_age_s)
        if problem is None and signer.kind == "service":
            relayed = await self._relayed(msg)  # judged as the principal it relays for
            if isinstance(relayed, Rejection):
                return relayed
            signer, nonce = relayed.principal, relayed.claims.jti
            if signer.kind == "operator":  # one operator call may fan out (a selector revoke)
                nonce = f"{nonce}:{claims.ce_id}"
            until = max(until, datetime.fromtimestamp(relayed.claims.exp, tz=UTC))
        problem = problem or self._checks(msg, event, signer)
        if problem is not None:
            return problem
        await self._warn_key_age(signer, msg.received_at)
        acted = signer.id if signer.kind == "agent" else ""  # last acted, in the same round trip
        first, new = await self.store.first_seen(
            signer.id or claims.iss, nonce, msg.origin, until + NONCE_MARGIN,
            agent=acted, at=msg.received_at)
        if first != msg.origin:
            return Rejection(Reason.REPLAY, f"signature {nonce} was already used at {first}; "
                             f"this copy at {msg.origin} is a replay")
        return Admitted(signer, self._refusal(event, signer, msg.received_at),
                        redelivered=not new)

    async def _relayed(self, msg: Incoming) -> Verified | Rejection:
        """The assertion a relayed record carries, verified with its principal's own key."""
        token = signing.header_value(msg.headers, ASSERTION_HEADER)
        if token is None:
            return Rejection(Reason.NOT_PERMITTED, "a record signed by a resource service must "
                             "carry the assertion of the principal it relays for")
        found = self._identities().verify(token, msg.received_at)
        if isinstance(found, Rejection) and found.code is Reason.UNKNOWN_KID:
            await self.sync()  # registered a moment ago?
            found = self._identities().verify(token, msg.received_at)
        return found

    def _identities(self) -> Identities:
        s = self.settings
        return Identities(self.operators, self.services, self.registry,
                          max_life_s=s.api_assertion_max_life_s, leeway_s=s.signature_max_skew_s)

    async def _stranger(self, event: WireModel | None) -> Admitted | None:
        """A request in the name of an agent the registry does not know goes on to be denied by
        policy (``unknown-agent``): there is no identity to spoof, and the requester hears why.
        Only requests: they can only be denied. Signals and commands about strangers are not."""
        if not isinstance(event, EscalationRequested):
            return None
        if self.registry.get(event.agent_id) is None:
            await self.sync()  # registered a moment ago?
        if self.registry.get(event.agent_id) is not None:
            return None
        return Admitted(Principal(event.agent_id, "agent"))

    def _unsigned(self, event: WireModel | None) -> Admitted | Rejection:
        if not self.settings.allow_unsigned:
            return Rejection(Reason.UNSIGNED, "event carries no ce_signature; sign it with the "
                             "agent's registered key (PERMBROKER_ALLOW_UNSIGNED is for dev only)")
        agent = claimed_agent(event) or "unsigned"
        return Admitted(Principal(agent, "agent"), self._refusal(event, None))

    async def _key(self, kid: str, offered: PublicJwk | None
                   ) -> tuple[Principal, PublicJwk] | Rejection:
        operator = self.operators.get(kid)
        if operator is not None:
            return Principal(operator[0], "operator", kid), operator[1]
        service = self.services.get(kid)
        if service is not None:
            return Principal(service[0], "service", kid), service[1]
        if offered is not None and offered.kid == kid:
            return Principal("", "agent", kid), offered  # the shell checks it registers itself
        owner = self.registry.owner_of(kid)
        if owner is None:  # registered a moment ago? catch up before calling it unknown
            await self.sync()
            owner = self.registry.owner_of(kid)
        record = self.registry.get(owner) if owner is not None else None
        key = find_key(record, kid) if record is not None else None
        if record is None or key is None:
            return Rejection(Reason.UNKNOWN_KID, f"no registered agent or operator key {kid}")
        return Principal(record.agent_id, "agent", kid), key.jwk

    def _binding(self, msg: Incoming, signer: Principal, claims: EventClaims) -> Rejection | None:
        """The signature binds this very message, recently, and names its key's owner."""
        problem = check_binding(
            claims, signing.facts(msg.key, msg.value, msg.headers, msg.received_at),
            max_age_s=self.settings.signature_max_age_s,
            skew_s=self.settings.signature_max_skew_s)
        if problem is None and claims.iss != (signer.id or claims.iss):
            problem = Rejection(Reason.TAMPERED, f"signature iss {claims.iss!r} is not the key's "
                                f"owner {signer.id!r}")
        return problem

    def _checks(self, msg: Incoming, event: WireModel | None,
                signer: Principal) -> Rejection | None:
        """The signer's key was usable when Kafka appended the event, and it may send it."""
        problem = None
        if signer.kind == "agent" and signer.id:
            record = self.registry.get(signer.id)
            key = find_key(record, signer.kid) if record is not None else None
            problem = key_usable(key, msg.received_at) if key is not None else None
            if problem is None and key is not None:
                problem = key_age_problem(key, self.lifecycle, msg.received_at)
        if problem is None and event is not None:
            problem = authorize_event(signer, event)
        return problem

    async def _warn_key_age(self, signer: Principal, at: datetime) -> None:
        """Tell the agent (once per key) that its key nears the policy's maximum age."""
        if self.lifecycle.max_key_age_s is None or signer.kind != "agent" or not signer.kid \
                or self.warn is None or signer.kid in self._warned:
            return
        record = self.registry.get(signer.id)
        key = find_key(record, signer.kid) if record is not None else None
        warning = key_age_warning(signer.id, key, self.lifecycle, at) if key else None
        if warning is not None:
            await self.warn(warning)
            self._warned.put(signer.kid, None)

    def _refusal(self, event: WireModel | None, signer: Principal | None,
                 at: datetime | None = None) -> Rejection | None:
        """Why an authentic agent still may not act (suspended, quarantined, model mismatch).

        Whoever signed, an agent's own request is judged by the agent's standing; only an
        operator acting *on* an agent (a revocation, a vote) needs no standing of the agent's.
        """
        agent = claimed_agent(event)
        if agent is None or (signer is not None and signer.kind == "operator"
                             and not is_agent_request(event)):
            return None
        record = self.registry.get(agent)
        if record is None:
            return Rejection(Reason.UNKNOWN_AGENT, f"agent {agent} is not registered")
        problem = agent_usable(record)
        if problem is None and at is not None:
            problem = registration_problem(record, self.lifecycle, at)
        if problem is None and isinstance(event, EscalationRequested) and event.model_version \
                and event.model_version != record.profile.model.version:
            problem = Rejection(Reason.MODEL_MISMATCH, f"request says model version "
                                f"{event.model_version}; the registry records "
                                f"{record.profile.model.version}")
        return problem

    async def reject(self, msg: Incoming, event: WireModel | None, why: Rejection,
                     signer: Principal | None = None) -> None:
        """Audit a refusal, naming the verified actor when there is one (redelivery-safe ids)."""
        self._count(f"rejected_{why.code.value}")
        agent = signer.id if signer is not None and signer.kind == "agent" and signer.id \
            else claimed_agent(event)
        if agent is None and msg.key is not None:
            agent = msg.key.decode(errors="replace")
        valid = agent if agent is not None and re.fullmatch(AGENT_ID_PATTERN, agent) else None
        sig = signing.presented(msg.headers)
        audit = rejection_audit(
            msg.origin, msg.received_at, why, agent_id=valid,
            subject_id=signing.header_value(msg.headers, "ce_id") or msg.origin,
            ce_type=signing.header_value(msg.headers, "ce_type"),
            kid=sig.kid if isinstance(sig, signing.Presented) else None, signer=signer)
        await self._audit(audit)
        log.warning("rejected %s at %s: %s", agent or "?", msg.origin, why.rule)

    async def authentic_for(self, msg: Incoming, agent_id: str) -> bool:
        """An undecodable message validly signed by ``agent_id`` itself or by an operator."""
        verdict, signer = await self.check(msg, None)
        if isinstance(verdict, Rejection):
            await self.reject(msg, None, verdict, signer)
            return False
        return is_operator(verdict.signer.id) or verdict.signer.id == agent_id
