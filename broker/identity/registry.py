"""Agent registry transitions (pure): a verified command and the current record -> the next record.

Imports schemas, broker.identity, broker.grants and broker.policy; time is an argument.

Operators register, update, suspend, resume, revoke keys and decommission (every grant revoked,
every key retired, the record and its audit kept; the id cannot register again until an operator
reinstates it with a new key) and renew registrations (which lapse under a policy's
``lifecycle.registration_ttl``); an agent may rotate only its own
key (signed by its current key) or register itself once with an operator's enrollment token
(signed by the new key: proof of possession). Agent credentials never perform operator actions.
A record carries the command that produced it (id and registry offset), so a redelivered command
is recognised and never applied twice (a redelivered ``suspend`` cannot undo a later ``resume``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from broker.grants.decide import derive_id
from broker.identity.rules import Principal, Reason, Rejection, retire_at, thumbprint
from broker.identity.tenants import DEFAULT_TENANT, id_problem
from broker.policy import RiskAction
from schemas.events import (
    AgentCommand,
    AgentKey,
    AgentProfile,
    AgentRecord,
    ModelInfo,
    RiskObserved,
)

OPERATOR_ACTIONS = frozenset({"update", "suspend", "resume", "revoke_key", "rotate_broker_key",
                              "decommission", "reinstate", "renew"})
MODEL_CHANGED_KIND = "model_changed"


@dataclass(frozen=True)
class Enrollment:
    """Verified claims of an operator's enrollment token (the adapter checked signature and exp)."""

    jti: str
    issuer: str
    agent_id: str
    profile: AgentProfile


@dataclass(frozen=True)
class Limits:
    """Broker settings the transitions apply."""

    agent_key_overlap_s: int = 300
    max_keys: int = 8
    known_classes: frozenset[str] | None = None  # None: do not check the class
    known_tenants: frozenset[str] | None = None  # None: do not check the tenant
    # Classes of the other tenants' policies (known_classes is the default tenant's).
    tenant_classes: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def classes_of(self, tenant: str) -> frozenset[str] | None:
        """The classes an agent of ``tenant`` may have (None: unchecked)."""
        if tenant == DEFAULT_TENANT or self.known_classes is None:
            return self.known_classes
        return self.tenant_classes.get(tenant, frozenset())


@dataclass(frozen=True)
class RegistryOutcome:
    """What one command does: a new record, or a refusal, plus effects for the shell."""

    record: AgentRecord | None = None
    refusal: Rejection | None = None
    revoke: RiskAction | None = None  # revoke every grant of the agent with this action
    model_change: tuple[ModelInfo, ModelInfo] | None = None
    already_applied: bool = False


@dataclass(frozen=True)
class _Ctx:
    current: AgentRecord | None
    cmd: AgentCommand
    signer: Principal
    at: datetime
    offset: int
    limits: Limits
    enrollment: Enrollment | None


def apply_command(current: AgentRecord | None, cmd: AgentCommand, signer: Principal, *,
                  at: datetime, offset: int, limits: Limits,
                  enrollment: Enrollment | None = None) -> RegistryOutcome:
    """The next record for ``cmd`` signed by ``signer``, appended to the registry at ``at``."""
    if current is not None and (current.cause_id == cmd.command_id
                                or 0 <= offset <= current.cause_offset):
        return RegistryOutcome(record=current, already_applied=True)
    ctx = _Ctx(current, cmd, signer, at, offset, limits, enrollment)
    problem = _authorize(ctx)
    if problem is not None:
        return RegistryOutcome(refusal=problem)
    if cmd.action == "rotate_broker_key":
        return RegistryOutcome()  # authorized; the shell rotates the broker's keyring
    if cmd.action == "register":
        return _register(ctx)
    if current is None:
        return _refuse(Reason.UNKNOWN_AGENT, f"agent {cmd.agent_id} is not registered")
    return _HANDLERS[cmd.action](ctx, current)


def _refuse(code: Reason, detail: str) -> RegistryOutcome:
    return RegistryOutcome(refusal=Rejection(code, detail))


def _authorize(ctx: _Ctx) -> Rejection | None:
    cmd, signer = ctx.cmd, ctx.signer
    if cmd.action == "rotate_broker_key" or cmd.agent_id is None:
        return None if signer.kind == "operator" and cmd.action == "rotate_broker_key" else \
            Rejection(Reason.NOT_PERMITTED, f"refused to {signer}: {cmd.action} needs an operator "
                      "key" + ("" if cmd.agent_id else " and an agent id"))
    if signer.kind == "operator":
        return None
    if cmd.action in OPERATOR_ACTIONS:
        return Rejection(Reason.NOT_PERMITTED, f"refused to {signer}: {cmd.action} is an "
                         "operator action; agent credentials cannot perform it")
    if signer.id != cmd.agent_id:
        return Rejection(Reason.NOT_PERMITTED, f"refused to {signer}: an agent may {cmd.action} "
                         f"only for itself, not for {cmd.agent_id}")
    if cmd.action == "register":
        return _enrollment_problem(ctx)
    return None


def _enrollment_problem(ctx: _Ctx) -> Rejection | None:
    cmd, enrollment = ctx.cmd, ctx.enrollment
    if cmd.enrollment is None or enrollment is None:
        return Rejection(Reason.NOT_PERMITTED, f"refused to {ctx.signer}: an agent registers "
                         "itself only with an operator's enrollment token")
    if enrollment.agent_id != cmd.agent_id:
        return Rejection(Reason.NOT_PERMITTED, f"the enrollment token is for agent "
                         f"{enrollment.agent_id}, not {cmd.agent_id}")
    if cmd.key is None or thumbprint(cmd.key) != ctx.signer.kid:
        return Rejection(Reason.NOT_PERMITTED, "a self-registration must be signed by the key "
                         "it registers (proof of possession)")
    return None


def _key(ctx: _Ctx) -> AgentKey | None:
    jwk = ctx.cmd.key
    if jwk is None:
        return None
    kid = thumbprint(jwk)
    return AgentKey(kid=kid, jwk=jwk.model_copy(update={"kid": kid}), added_at=ctx.at)


def _next(ctx: _Ctx, base: AgentRecord, change: str, **fields: object) -> AgentRecord:
    return base.model_copy(update={
        "revision": base.revision + 1, "change": change, "reason": ctx.cmd.reason,
        "changed_at": ctx.at, "changed_by": ctx.signer.id, "cause_id": ctx.cmd.command_id,
        "cause_offset": ctx.offset, **fields})


def _profile_problem(ctx: _Ctx, profile: AgentProfile | None) -> Rejection | None:
    if profile is None:
        return Rejection(Reason.INVALID, f"{ctx.cmd.action} needs the agent's profile")
    if profile.agent_id != ctx.cmd.agent_id:
        return Rejection(Reason.INVALID, f"the profile is of agent {profile.agent_id}, not "
                         f"{ctx.cmd.agent_id}")
    tenant_problem = id_problem(profile.agent_id, profile.tenant, ctx.limits.known_tenants)
    if tenant_problem is not None:
        return Rejection(Reason.INVALID, tenant_problem)
    if ctx.current is not None and ctx.current.profile.tenant != profile.tenant:
        return Rejection(Reason.INVALID, f"agent {profile.agent_id} belongs to tenant "
                         f"{ctx.current.profile.tenant}; an agent never changes tenant")
    known = ctx.limits.classes_of(profile.tenant)
    if known is not None and profile.agent_class not in known:
        return Rejection(Reason.INVALID, f"agent class {profile.agent_class!r} is not defined "
                         f"by the policy (known: {', '.join(sorted(known)) or 'none'})")
    return None


def _register(ctx: _Ctx) -> RegistryOutcome:
    if ctx.current is not None and ctx.current.status == "decommissioned":
        return _refuse(Reason.DECOMMISSIONED, f"agent {ctx.cmd.agent_id} was decommissioned "
                       f"({ctx.current.reason or 'no reason given'}); its id registers again "
                       "only when an operator reinstates it (agents reinstate, with a new key)")
    if ctx.current is not None:
        return _refuse(Reason.INVALID, f"agent {ctx.cmd.agent_id} is already registered "
                       f"(revision {ctx.current.revision}); use update or rotate_key")
    profile = ctx.enrollment.profile if ctx.enrollment is not None else ctx.cmd.profile
    problem = _profile_problem(ctx, profile)
    key = _key(ctx)
    if problem is not None or key is None or profile is None:
        return RegistryOutcome(refusal=problem or Rejection(Reason.INVALID,
                                                            "register needs a public key"))
    record = AgentRecord(
        agent_id=profile.agent_id, profile=profile.model_copy(update={"baseline": (),
                                                                      "ceiling": ()}),
        keys=(key,), revision=1, change="registered", reason=ctx.cmd.reason,
        changed_at=ctx.at, changed_by=ctx.signer.id, cause_id=ctx.cmd.command_id,
        cause_offset=ctx.offset, registered_at=ctx.at,
        enrollment_id=ctx.enrollment.jti if ctx.enrollment is not None else None)
    return RegistryOutcome(record=record)


def _update(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    profile = ctx.cmd.profile
    problem = _profile_problem(ctx, profile)
    if problem is not None or profile is None:
        return RegistryOutcome(refusal=problem)
    old, new = current.profile.model, profile.model
    changed = (old.name, old.version, old.digest) != (new.name, new.version, new.digest)
    record = _next(ctx, current, "updated",
                   profile=profile.model_copy(update={"baseline": (), "ceiling": ()}))
    return RegistryOutcome(record=record, model_change=(old, new) if changed else None)


def _suspend(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    if current.status == "suspended":
        return _refuse(Reason.INVALID, f"agent {current.agent_id} is already suspended")
    action = RiskAction(True, "registry:suspended", f"agent suspended by {ctx.signer.id}: "
                        f"{ctx.cmd.reason or 'no reason given'}")
    return RegistryOutcome(record=_next(ctx, current, "suspended", status="suspended"),
                           revoke=action)


def _resume(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    if current.status == "decommissioned":
        return _refuse(Reason.DECOMMISSIONED, f"agent {current.agent_id} is decommissioned; "
                       "only reinstate (with a new key) brings it back")
    if current.status == "active":
        return _refuse(Reason.INVALID, f"agent {current.agent_id} is already active")
    return RegistryOutcome(record=_next(ctx, current, "resumed", status="active"))


def _rotate(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    new = _key(ctx)
    if new is None:
        return _refuse(Reason.INVALID, "rotate_key needs the new public key")
    if any(k.kid == new.kid for k in current.keys):
        return _refuse(Reason.INVALID, f"key {new.kid} is already registered for "
                       f"{current.agent_id}; generate a new key pair")
    limit = ctx.limits.agent_key_overlap_s
    overlap = min(ctx.cmd.overlap_s if ctx.cmd.overlap_s is not None else limit, limit)
    until = retire_at(ctx.at, overlap)
    # Replaced keys stay listed (retired ones too, so a late signature is named key-retired)
    # until max_keys pushes the oldest out.
    kept = [k.model_copy(update={"status": "retiring", "not_after": until})
            if k.status == "active" else k for k in current.keys]
    keys = (*kept[-(ctx.limits.max_keys - 1):], new)
    return RegistryOutcome(record=_next(ctx, current, "key_rotated", keys=keys))


def _revoke_key(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    kid = ctx.cmd.kid
    if kid is None or not any(k.kid == kid for k in current.keys):
        return _refuse(Reason.INVALID, f"agent {current.agent_id} has no key {kid}")
    keys = tuple(k.model_copy(update={"status": "revoked", "revoked_at": ctx.at})
                 if k.kid == kid else k for k in current.keys)
    action = RiskAction(True, "registry:key-revoked", f"key {kid} revoked by {ctx.signer.id} "
                        f"({ctx.cmd.reason or 'no reason given'}): every grant of the agent is "
                        "revoked and it is quarantined until an operator resumes it")
    record = _next(ctx, current, "key_revoked", keys=keys, status="quarantined")
    return RegistryOutcome(record=record, revoke=action)


def _decommission(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    if current.status == "decommissioned":
        return _refuse(Reason.INVALID, f"agent {current.agent_id} is already decommissioned")
    keys = tuple(k if k.status == "revoked" else
                 k.model_copy(update={"status": "revoked", "revoked_at": ctx.at})
                 for k in current.keys)
    action = RiskAction(True, "registry:decommissioned", f"agent decommissioned by "
                        f"{ctx.signer.id}: {ctx.cmd.reason or 'no reason given'}")
    record = _next(ctx, current, "decommissioned", keys=keys, status="decommissioned")
    return RegistryOutcome(record=record, revoke=action)


def _renew(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    """Renew the registration (it lapses ``lifecycle.registration_ttl`` after this)."""
    if current.status == "decommissioned":
        return _refuse(Reason.DECOMMISSIONED, f"agent {current.agent_id} is decommissioned; "
                       "only reinstate (with a new key) brings it back")
    return RegistryOutcome(record=_next(ctx, current, "renewed", renewed_at=ctx.at))


def _reinstate(ctx: _Ctx, current: AgentRecord) -> RegistryOutcome:
    """Bring a decommissioned id back, with a new key (its old keys stay revoked)."""
    if current.status != "decommissioned":
        return _refuse(Reason.INVALID, f"agent {current.agent_id} is {current.status}, not "
                       "decommissioned; reinstate is only for a decommissioned agent")
    new = _key(ctx)
    if new is None or any(k.kid == new.kid for k in current.keys):
        return _refuse(Reason.INVALID, "reinstate needs a new public key (never one the agent "
                       "had before)")
    keys = (*current.keys[-(ctx.limits.max_keys - 1):], new)
    return RegistryOutcome(record=_next(ctx, current, "reinstated", keys=keys, status="active",
                                        renewed_at=ctx.at))


_HANDLERS: dict[str, Callable[[_Ctx, AgentRecord], RegistryOutcome]] = {
    "update": _update, "suspend": _suspend, "resume": _resume, "rotate_key": _rotate,
    "revoke_key": _revoke_key, "decommission": _decommission, "reinstate": _reinstate,
    "renew": _renew,
}


def model_change_signal(cmd: AgentCommand, old: ModelInfo, new: ModelInfo,
                        at: datetime) -> RiskObserved:
    """The risk signal a model change amounts to; the policy's revocation rules judge it."""
    def name(m: ModelInfo) -> str:
        return f"{m.name} {m.version}" + (f" ({m.digest})" if m.digest else "")

    return RiskObserved(
        signal_id=derive_id("model-change", cmd.command_id, cmd.agent_id or ""),
        subject_agent_id=cmd.agent_id,
        kind=MODEL_CHANGED_KIND, severity=1.0,
        source=f"registry: model {name(old)} -> {name(new)}"[:128],
        detail=cmd.reason, observed_at=at)
