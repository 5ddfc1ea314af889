"""Registry and grant commands, and the broker's published keys. Imports broker, schemas, streams.

``open`` loads the registry from Kafka and the broker keyring from its file, then opens the gate.

Registry commands (``permbroker.registry``) are verified by the identity gate, turned into the
next agent record by the pure ``broker.identity.registry`` and published to the compacted agents
topic (Kafka is the record), with their effects: a suspension or key revocation revokes every grant,
a model change is judged by the policy's revocation rules. A grant command lets an agent obtain
a short-lived token for one of its own grants (encrypted to the key it sent), or an operator
revoke one grant (ended in Redis as a release ends it, ``grant.revoked`` naming the operator on
the grant topics; never undone: the grant's id stays ended everywhere). Every command
gets an answer on the decisions topic and an audit record. (Releasing and renewing a grant are
requests on the escalation topic, decided by streams.lifecycle behind the same identity gate.)
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from broker.adapters.crypto.enrollment import verify_enrollment
from broker.adapters.crypto.jwe import encrypt_to
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.tokens import BrokerKeyring, mint_grant_token
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.codec import encode
from broker.adapters.kafka.registry_view import RegistryView
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.config import Settings
from broker.delivery.routing import namespaces_of
from broker.errors import BrokerError, IdentityError, WireError
from broker.grants.decide import derive_id
from broker.grants.revocation import grant_revocation, lifecycle_audit, risk_audit
from broker.identity.answers import answer, command_audit
from broker.identity.registry import (
    Enrollment,
    Limits,
    RegistryOutcome,
    apply_command,
    model_change_signal,
)
from broker.identity.rules import Principal, Reason, Rejection, grant_owner_problem, thumbprint
from schemas import topics
from schemas.events import (
    AgentCommand,
    AgentRecord,
    GrantCommand,
    GrantIssued,
    GrantRevoked,
    KeyAgeWarning,
)
from streams.identity.baseline import Baselines
from streams.identity.gate import Admitted, IdentityGate
from streams.risk import Risk
from streams.worker import SOURCE, Incoming, WorkerContext

log = logging.getLogger("permbroker.identity")


class Commands:
    """Handlers of the registry and grant-command topics, and the JWKS publisher."""

    def __init__(self, ctx: WorkerContext, gate: IdentityGate, risk: Risk,
                 settings: Settings, kafka: KafkaAccess, keyring: BrokerKeyring,
                 trust: RecordTrust, life: LifecycleStore) -> None:
        self.ctx = ctx
        self.life = life
        self.kafka = kafka
        self.gate = gate
        self.risk = risk
        self.settings = settings
        self.keyring = keyring
        self.trust = trust
        self.ready = asyncio.Event()
        self._published_jwks = ""
        self.baselines = Baselines(ctx, gate)
        gate.warn = self._key_warning

    async def open(self) -> None:
        """Load the registry from Kafka (once the key sets are followed); open the gate."""
        gate = self.gate
        await self.ctx.trusted.wait()  # registry records signed by a rotated key verify then
        while True:
            try:
                registry = await asyncio.to_thread(RegistryView, self.kafka, self.trust)
                break
            except BrokerError as exc:
                log.error("identity not ready: %s (retrying)", exc)
                await asyncio.sleep(1.0)
        # The view's thread reads on through Kafka errors: a slow load is waited for, never
        # started again from the first record.
        while not await asyncio.to_thread(registry.wait_ready, 30.0):
            log.warning("identity not ready: the agent registry is still loading (%d agent(s) "
                        "so far)", registry.count())
        if not gate.operators.keys():
            log.error("no trusted operator keys in %s: operator commands will be refused; run "
                      "`permbroker keys init`", gate.operators.path)
        gate.start(registry)
        self.ready.set()
        await self.publish_jwks(force=True)
        await self.ctx.ready.wait()
        await self.baselines.announce_at_start()  # a view that starts later finds the current ones
        log.info("identity ready: %d agent(s) in the registry", registry.count())

    async def _refuse(self, msg: Incoming, cmd: AgentCommand | GrantCommand, why: Rejection,
                      signer: Principal | None) -> None:
        await self.gate.reject(msg, cmd, why, signer)
        if signer is not None:  # only an authenticated sender hears back (no forged answers)
            await self.ctx.emit(topics.DECISIONS.name, answer(cmd, msg.received_at, refusal=why))

    # --- registry ---------------------------------------------------------------------------

    async def on_registry(self, msg: Incoming) -> None:
        """Apply one registry command (idempotent under redelivery)."""
        await self.ctx.ready.wait()
        await self.ready.wait()
        try:
            cmd = self.ctx.decode(msg, AgentCommand)
        except WireError as exc:
            await self.ctx.dead_letter(msg, str(exc), exc.code)
            return
        await self.ctx.retrying("registry", lambda: self._registry(cmd, msg))

    async def _registry(self, cmd: AgentCommand, msg: Incoming) -> None:
        own = cmd.key.model_copy(update={"kid": thumbprint(cmd.key)}) \
            if cmd.action == "register" and cmd.enrollment and cmd.key else None
        verdict, by = await self.gate.check(msg, cmd, key=own)
        if isinstance(verdict, Rejection):
            await self._refuse(msg, cmd, verdict, by)
            return
        signer, enrollment = self._enrolled(cmd, verdict, own, msg.received_at)
        if isinstance(enrollment, Rejection):
            await self._refuse(msg, cmd, enrollment, signer)
            return
        if cmd.action == "rotate_key" and signer.id == cmd.agent_id and verdict.refusal:
            await self._refuse(msg, cmd, verdict.refusal, signer)  # suspended: no new keys
            return
        await self.gate.sync()  # read the latest record before writing the next one
        current = self.gate.registry.get(cmd.agent_id) if cmd.agent_id else None
        outcome = apply_command(current, cmd, signer, at=msg.received_at, offset=msg.offset,
                                limits=self._limits(), enrollment=enrollment)
        if outcome.refusal is not None:
            await self._refuse(msg, cmd, outcome.refusal, signer)
        elif cmd.action == "rotate_broker_key":
            await self._rotate_broker(cmd, msg, signer)
        else:
            await self._record(cmd, msg, signer, outcome)

    def _enrolled(self, cmd: AgentCommand, verdict: Admitted, own: object, at: datetime
                  ) -> tuple[Principal, Enrollment | Rejection | None]:
        """The signer of a self-registration, and its enrollment (judged at append time)."""
        if own is None:
            return verdict.signer, None
        signer = Principal(cmd.agent_id or "", "agent", verdict.signer.kid)
        return signer, verify_enrollment(cmd.enrollment or "", self.gate.operators.keys(), at)

    def _limits(self) -> Limits:
        tenancy = self.ctx.tenancy
        return Limits(agent_key_overlap_s=self.settings.agent_key_overlap_s,
                      known_classes=frozenset(self.ctx.policy.classes),
                      known_tenants=tenancy.tenants,
                      tenant_classes={t: frozenset(p.classes) for t, p in tenancy.others.items()})

    async def _record(self, cmd: AgentCommand, msg: Incoming, signer: Principal,
                      outcome: RegistryOutcome) -> None:
        record = outcome.record
        assert record is not None
        if not outcome.already_applied:
            await self.ctx.emit(topics.AGENTS.name, record)
            self.gate.registry.apply(record)  # write-through: this worker acts on it at once
        revoked = await self._effects(cmd, msg, record, outcome)
        # After its revocations, on the same agent key: a view applies them in that order.
        token = await self.baselines.state(record, msg.received_at)
        reason = f"{record.change} {record.agent_id} (revision {record.revision})"
        await self.ctx.audit(command_audit(
            cmd, msg.received_at, signer=signer, kind=f"registry.{record.change}",
            reason=reason, origin=msg.origin, revision=record.revision,
            revoked_grants=list(revoked)))
        await self.ctx.emit(topics.DECISIONS.name, answer(
            cmd, msg.received_at, reason=reason, record_revision=record.revision,
            consistency_token=token.encode() if token is not None else None))

    async def _effects(self, cmd: AgentCommand, msg: Incoming, record: AgentRecord,
                       outcome: RegistryOutcome) -> tuple[str, ...]:
        agent, at = record.agent_id, msg.received_at
        if outcome.revoke is not None:
            return await self.risk.revoke_agent(
                agent, derive_id("registry", cmd.command_id, agent), outcome.revoke, at)
        if outcome.model_change is None:
            return ()
        signal = model_change_signal(cmd, *outcome.model_change, at)
        profile = self.gate.profile(agent)
        action = self.ctx.policy_for(profile).on_risk(signal, profile, at)
        revoked: tuple[str, ...] = ()
        if action.revoke:
            revoked = await self.risk.revoke_agent(agent, signal.signal_id, action, at)
        await self.ctx.audit(risk_audit(signal, action, revoked, at))
        return revoked

    async def _rotate_broker(self, cmd: AgentCommand, msg: Incoming, signer: Principal) -> None:
        overlap = cmd.overlap_s if cmd.overlap_s is not None else \
            self.settings.broker_key_overlap_s
        kid = self.keyring.rotate(datetime.now(UTC), overlap_s=overlap, cause=cmd.command_id)
        await self.publish_jwks(force=True)
        reason = f"broker key {kid} added; the previous key(s) verify for {overlap}s more"
        await self.ctx.audit(command_audit(
            cmd, msg.received_at, signer=signer, kind="broker.key_rotated", reason=reason,
            origin=msg.origin, kid_added=kid))
        await self.ctx.emit(topics.DECISIONS.name, answer(cmd, msg.received_at, reason=reason))

    async def _key_warning(self, warning: KeyAgeWarning) -> None:
        """Tell the agent on its decisions partition: its SDK rotates the key before the limit."""
        await self.ctx.emit(topics.DECISIONS.name, warning)
        log.warning("agent %s: %s", warning.agent_id, warning.reason)

    # --- grant commands ---------------------------------------------------------------------

    async def on_grant_command(self, msg: Incoming) -> None:
        """Issue a token for an agent's own grant, or revoke one grant for an operator."""
        await self.ctx.ready.wait()
        await self.ready.wait()
        try:
            cmd = self.ctx.decode(msg, GrantCommand)
        except WireError as exc:
            await self.ctx.dead_letter(msg, str(exc), exc.code)
            return
        await self.ctx.retrying("grant-command", lambda: self._grant_command(cmd, msg))

    async def _grant_command(self, cmd: GrantCommand, msg: Incoming) -> None:
        verdict, by = await self.gate.check(msg, cmd)
        if isinstance(verdict, Rejection):
            await self._refuse(msg, cmd, verdict, by)
            return
        why = grant_owner_problem(cmd) or verdict.refusal
        if why is not None:
            await self._refuse(msg, cmd, why, verdict.signer)
            return
        if cmd.action == "revoke":
            await self._revoke_grant(cmd, msg, verdict.signer)
            return
        now = datetime.now(UTC)
        held = [g for g in await self.ctx.store.active_grants(cmd.agent_id, now)
                if g.grant_id == cmd.grant_id]
        if not held:
            await self._refuse(msg, cmd, Rejection(Reason.NOT_YOUR_GRANT, f"{cmd.grant_id} is "
                               f"not an active grant of {cmd.agent_id}"), verdict.signer)
            return
        await self._token(cmd, msg, verdict.signer, held[0], now)

    async def _revoke_grant(self, cmd: GrantCommand, msg: Incoming, signer: Principal) -> None:
        """End one grant for an operator, as a release ends it; a redelivery republishes the
        recorded ``grant.revoked`` (same ids) and ends nothing twice."""
        life, agent = self.life, cmd.agent_id
        revoked = await life.recorded_revocation(agent, cmd.command_id)
        spaces = None  # unknown on a redelivery: the end goes to every routed topic
        if revoked is None:
            grant = await life.live_grant(agent, cmd.grant_id, await self.ctx.store.now())
            stored = None
            if grant is not None:
                revoked = grant_revocation(
                    grant, cmd.command_id, f"revoked by {signer.id}: "
                    f"{cmd.reason or 'no reason given'}", msg.received_at)
                spaces = namespaces_of(grant.scopes)
                stored = await life.revoke_one(
                    revoked, max_grant_s=self.ctx.policy.max_grant_duration_s)
            if stored is None or stored.status == "blocked":
                await self._refuse(msg, cmd, Rejection(Reason.NOT_YOUR_GRANT, f"{cmd.grant_id} "
                                   f"is not an active grant of {agent} (expired, released or "
                                   "revoked already)"), signer)
                return
            revoked = GrantRevoked.model_validate_json(stored.decision_json)
        await self.ctx.emit_grants((revoked, spaces))
        await self.ctx.audit(lifecycle_audit(revoked, msg.received_at), command_audit(
            cmd, msg.received_at, signer=signer, kind="grant.revoked_by_operator",
            reason=revoked.reason, origin=msg.origin, revoked_grants=[revoked.grant_id],
            expires_at=revoked.expires_at.isoformat()))
        self.ctx.count("revocations")
        await self.ctx.emit(topics.DECISIONS.name, answer(
            cmd, msg.received_at, reason=revoked.reason, grant_id=revoked.grant_id))

    async def _token(self, cmd: GrantCommand, msg: Incoming, signer: Principal,
                     grant: GrantIssued, now: datetime) -> None:
        try:
            if cmd.reply_key is None or cmd.audience is None:
                raise IdentityError("a token request needs an audience and a reply_key")
            self.keyring.reload()
            token, exp = mint_grant_token(grant, cmd.audience, self.keyring, now=now,
                                          max_ttl_s=self.settings.token_max_ttl_s)
            sealed = encrypt_to(cmd.reply_key, token.encode())
        except IdentityError as exc:
            await self._refuse(msg, cmd, Rejection(Reason.INVALID, str(exc)), signer)
            return
        kid = self.keyring.signing_key(now).kid
        await self.ctx.audit(command_audit(
            cmd, msg.received_at, signer=signer, kind="grant.token_issued",
            reason=f"token for grant {grant.grant_id} at {cmd.audience} until {exp.isoformat()}",
            origin=msg.origin, broker_kid=kid, token_expires_at=exp.isoformat()))
        await self.ctx.emit(topics.DECISIONS.name, answer(
            cmd, msg.received_at, reason=f"token until {exp.isoformat()}", grant_id=grant.grant_id,
            token=sealed, token_expires_at=exp))

    # --- the broker's public keys -----------------------------------------------------------

    async def publish_jwks(self, *, force: bool = False) -> bool:
        """Publish the JWKS when it changed (a rotation, a retirement); True if published.

        It is signed by a key of the set the readers hold in force (the chain of trust: the new
        set by the old key); a set already in force is not published again.
        """
        now = datetime.now(UTC)
        self.keyring.reload()
        jwks = self.keyring.jwks(now)
        if jwks.revision == self._published_jwks and not force:
            return False
        current = self.trust.current()
        if current is not None and current.revision == jwks.revision:
            self._published_jwks = jwks.revision
            return False
        key = self.keyring.chain_key(self.trust.signers(), now)
        if key is None:
            log.error("cannot publish JWKS %s: no key of this keyring is in the readers' set "
                      "in force (%s); the trust anchor %s does not chain to this keyring",
                      jwks.revision, ", ".join(sorted(self.trust.signers())),
                      self.settings.key_path("trust-anchor"))
            return False
        signed = sign_message(encode(jwks, source=SOURCE), key, self.keyring.issuer, now)
        await self.ctx.publisher.publish(topics.JWKS.name, [signed])
        self._published_jwks = jwks.revision
        self.keyring.prune(now)
        log.info("published JWKS %s signed by %s: %s", jwks.revision, key.kid,
                 ", ".join(k.kid or "" for k in jwks.keys))
        return True
