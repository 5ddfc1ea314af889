"""Agent lifecycle rules (pure): key age, registration lapse, dormancy, against the policy's
``lifecycle`` limits. Imports schemas, broker.grants, broker.identity.rules and broker.policy;
time is an argument.
"""

from __future__ import annotations

from datetime import datetime

from broker.grants.decide import derive_id
from broker.identity.rules import Reason, Rejection
from broker.policy.lifecycle import AgentLifecycle
from schemas.events import AgentKey, AgentRecord, KeyAgeWarning


def registration_ends(record: AgentRecord, limits: AgentLifecycle) -> datetime | None:
    """When the agent's registration lapses unless an operator renews it (None: never)."""
    return limits.registration_ends(record.renewed_at or record.registered_at)


def registration_problem(record: AgentRecord, limits: AgentLifecycle,
                         at: datetime) -> Rejection | None:
    """A lapsed registration: the agent may not act (nor hold its baseline) until renewed."""
    ends = registration_ends(record, limits)
    if ends is None or at < ends:
        return None
    return Rejection(Reason.REGISTRATION_LAPSED, f"the registration of {record.agent_id} lapsed "
                     f"at {ends.isoformat()} (lifecycle.registration_ttl); an operator renews "
                     "it with `permbroker agents renew`")


def key_age_problem(key: AgentKey, limits: AgentLifecycle, at: datetime) -> Rejection | None:
    """A signature by a key older than the policy's maximum key age is refused, saying so."""
    why = limits.key_problem(key.added_at, at)
    return Rejection(Reason.KEY_TOO_OLD, f"key {key.kid}: {why}") if why else None


def key_age_warning(agent_id: str, key: AgentKey, limits: AgentLifecycle,
                    at: datetime) -> KeyAgeWarning | None:
    """The warning due for a key inside the warning window (one id per key)."""
    warn, refused = limits.key_warned_at(key.added_at), limits.key_refused_at(key.added_at)
    if warn is None or refused is None or not warn <= at < refused:
        return None
    return KeyAgeWarning(
        warning_id=derive_id("key-warning", key.kid, agent_id), agent_id=agent_id, kid=key.kid,
        added_at=key.added_at, refused_at=refused, warned_at=at,
        reason=f"key {key.kid} will be refused from {refused.isoformat()} "
        "(lifecycle.max_key_age): rotate it now")


def lifecycle_flags(record: AgentRecord, limits: AgentLifecycle, last_acted: datetime | None,
                    now: datetime) -> tuple[str, ...]:
    """Inventory flags: dormant, key-expiring, key-too-old, registration-expiring/lapsed."""
    flags = []
    if record.status == "active" and limits.dormant(last_acted, record.registered_at, now):
        flags.append("dormant")
    active = [k for k in record.keys if k.status == "active"]
    if any(limits.key_problem(k.added_at, now) for k in active):
        flags.append("key-too-old")
    elif any(key_age_warning(record.agent_id, k, limits, now) for k in active):
        flags.append("key-expiring")
    if registration_problem(record, limits, now) is not None:
        flags.append("registration-lapsed")
    return tuple(flags)
