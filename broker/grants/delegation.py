"""Delegation decisions (pure): a child grant carved from a parent grant, or why not.

Imports broker.policy, broker.scopes, broker.grants.decide and schemas; time is an argument.

A child never exceeds its parent: its scopes are a subset of the parent's (and of the
delegate's ceiling, and of what a delegation rule lets the delegator's class hand to the
delegate's class: default deny), its resources a subset of the parent's (a wider request is
narrowed, and the decision says so), and its ``expires_at`` is at most the parent's (clamped,
never beyond) and at most the rule's ``max_duration`` from now. A revoked or quarantined
delegator, an unknown or quarantined delegate, and a parent grant the delegator does not hold
(or that has ended) deny the whole request, naming the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.grants.decide import AgentState, derive_id
from broker.policy.delegation import DelegationRule
from broker.policy.evaluate import Policy
from broker.policy.model import CEILING_PREFIX, DEFAULT_DENY
from broker.scopes import matches, within
from schemas.events import (
    AgentProfile,
    AuditRecord,
    DelegationDecided,
    DelegationRequested,
    GrantIssued,
    ScopeDenial,
)

PARENT = "delegation-parent"  # the parent grant is not the delegator's, or has ended
SUBSET = "delegation-subset"  # a scope or every resource outside the parent grant
DELEGATOR = "delegation-delegator"  # the delegator is revoked or quarantined
DELEGATE = "delegation-delegate"  # the delegate is unknown, the delegator itself, or quarantined
DECIDED_KIND = "grant.delegation.decided"  # the audit record of a delegation decision


@dataclass(frozen=True)
class Parties:
    """Who takes part in one delegation, as the store and registry know them at ``now``."""

    parent: GrantIssued | None  # the parent grant if live and the delegator's
    delegator: AgentProfile | None
    delegator_state: AgentState
    delegate: AgentProfile | None
    delegate_state: AgentState
    refusal: ScopeDenial | None = None  # the identity gate's (a suspended delegator, ...)


@dataclass(frozen=True)
class DelegationOutcome:
    """The decision, the child grant (None when denied) and the audit record of the decision."""

    decision: DelegationDecided
    grant: GrantIssued | None
    audit: AuditRecord


def decide_delegation(request: DelegationRequested, parties: Parties, policy: Policy,
                      now: datetime) -> DelegationOutcome:
    """Decide one delegation request at ``now``."""
    blocked = _blocked(request, parties, now)
    if blocked is not None:
        return _outcome(request, policy, parties, now, denied=tuple(
            ScopeDenial(scope=s, rule=blocked.rule, reason=blocked.reason)
            for s in request.scopes), reasons=(blocked.reason,))
    parent, delegate = parties.parent, parties.delegate
    assert parent is not None and delegate is not None and parties.delegator is not None
    granted, denied, rules = _scopes(request, parent, parties.delegator, delegate, policy)
    resources, narrowed = _resources(request, parent)
    if granted and resources is None:
        denied += tuple(ScopeDenial(scope=s, rule=SUBSET, reason=narrowed) for s in granted)
        granted = ()
    if not granted:
        return _outcome(request, policy, parties, now, denied=denied,
                        reasons=tuple(d.reason for d in denied), rules=rules)
    expires_at, clamped_by = _expiry(request, parent, rules, policy, now)
    grant = GrantIssued(
        grant_id=derive_id("grant", request.request_id, request.delegate_id),
        agent_id=request.delegate_id, request_id=request.request_id, scopes=granted,
        resources=resources or (), issued_at=now, expires_at=expires_at,
        policy_revision=policy.revision, rules=tuple(r.id for r in rules),
        model_version=delegate.model.version, parent_grant_id=parent.grant_id,
        delegators=(request.agent_id, *parent.delegators),
    )
    reasons = tuple(d.reason for d in denied) + ((narrowed,) if narrowed else ())
    return _outcome(request, policy, parties, now, denied=denied, reasons=reasons,
                    rules=rules, grant=grant, clamped_by=clamped_by)


def _blocked(request: DelegationRequested, parties: Parties, now: datetime) -> ScopeDenial | None:
    """Why nothing at all can be delegated: the parent, the delegator or the delegate."""
    if parties.refusal is not None:
        return parties.refusal
    parent, agent = parties.parent, request.agent_id
    if parent is None or parent.agent_id != agent:
        return _deny(PARENT, f"agent {agent} holds no live grant {request.parent_grant_id} "
                     "(never its own, or revoked, released or expired)")
    if _quarantined(parties.delegator_state, now) or parties.delegator is None or (
            parties.delegator_state.revoked_at is not None
            and parties.delegator_state.revoked_at >= parent.issued_at):
        return _deny(DELEGATOR, f"agent {agent} is revoked or quarantined: it cannot delegate")
    if parties.delegate is None or request.delegate_id == agent:
        return _deny(DELEGATE, f"agent {request.delegate_id} is not a registered agent other "
                     f"than the delegator {agent}")
    if _quarantined(parties.delegate_state, now):
        return _deny(DELEGATE, f"agent {request.delegate_id} is quarantined")
    return None


def _quarantined(state: AgentState, now: datetime) -> bool:
    return state.quarantined_until is not None and now < state.quarantined_until


def _deny(rule: str, reason: str) -> ScopeDenial:
    return ScopeDenial(scope="*", rule=rule, reason=reason)


def _scopes(request: DelegationRequested, parent: GrantIssued, delegator: AgentProfile,
            delegate: AgentProfile, policy: Policy
            ) -> tuple[tuple[str, ...], tuple[ScopeDenial, ...], tuple[DelegationRule, ...]]:
    """The scopes granted, those denied (each naming its rule), and the rules that matched."""
    rules = tuple(r for r in policy.delegation_rules
                  if delegator.agent_class in r.from_classes
                  and delegate.agent_class in r.to_classes)
    granted: list[str] = []
    denied: list[ScopeDenial] = []
    matched: dict[str, DelegationRule] = {}
    for scope in dict.fromkeys(request.scopes):
        covering = [r for r in rules if any(matches(g, scope) for g in r.scopes)]
        if scope not in parent.scopes:
            denied.append(ScopeDenial(scope=scope, rule=SUBSET, reason=(
                f"{scope} is not a scope of parent grant {parent.grant_id} "
                f"({', '.join(parent.scopes)})")))
        elif not within(scope, delegate.ceiling):
            denied.append(ScopeDenial(scope=scope, rule=CEILING_PREFIX + delegate.agent_class,
                                      reason=f"{scope} is outside the ceiling of "
                                      f"{request.delegate_id} (class {delegate.agent_class})"))
        elif not covering:
            denied.append(ScopeDenial(scope=scope, rule=DEFAULT_DENY, reason=(
                f"no delegation rule lets class {delegator.agent_class} delegate {scope} "
                f"to class {delegate.agent_class}")))
        else:
            granted.append(scope)
            matched.update((r.id, r) for r in covering)
    return tuple(granted), tuple(denied), tuple(matched.values())


def _resources(request: DelegationRequested,
               parent: GrantIssued) -> tuple[tuple[str, ...] | None, str]:
    """The child's resources (None: none left) and what narrowing them says ("" if none)."""
    if not parent.resources:
        return request.resources, ""
    if not request.resources:
        return parent.resources, ""
    kept = tuple(r for r in request.resources if r in parent.resources)
    dropped = [r for r in request.resources if r not in parent.resources]
    if not dropped:
        return kept, ""
    why = (f"resources {', '.join(dropped)} are outside parent grant {parent.grant_id} "
           f"({', '.join(parent.resources)})")
    return (kept or None), (why + "; narrowed" if kept else why)


def _expiry(request: DelegationRequested, parent: GrantIssued,
            rules: tuple[DelegationRule, ...], policy: Policy,
            now: datetime) -> tuple[datetime, str | None]:
    """The child's absolute expiry (never past the parent's) and what clamped it, if anything."""
    limits = [(policy.default_max_duration_s, "defaults.max_duration")] + [
        (r.max_duration_s, f"rule {r.id}: max_duration") for r in rules if r.max_duration_s]
    limit_s, source = min(limits, key=lambda x: x[0])
    expires_at, clamped_by = now + timedelta(seconds=request.duration_s), None
    if limit_s < request.duration_s:
        expires_at, clamped_by = now + timedelta(seconds=limit_s), source
    if parent.expires_at < expires_at:
        expires_at = parent.expires_at
        clamped_by = f"parent grant {parent.grant_id} expires at {parent.expires_at.isoformat()}"
    return expires_at, clamped_by


def _outcome(request: DelegationRequested, policy: Policy, parties: Parties, now: datetime, *,
             denied: tuple[ScopeDenial, ...], reasons: tuple[str, ...],
             rules: tuple[DelegationRule, ...] = (), grant: GrantIssued | None = None,
             clamped_by: str | None = None) -> DelegationOutcome:
    matched = tuple(dict.fromkeys([r.id for r in rules] + [d.rule for d in denied]))
    decision = DelegationDecided(
        decision_id=derive_id("delegation", request.request_id, request.agent_id),
        request_id=request.request_id, agent_id=request.agent_id,
        delegate_id=request.delegate_id, parent_grant_id=request.parent_grant_id,
        outcome="granted" if grant else "denied", grant_id=grant.grant_id if grant else None,
        granted_scopes=grant.scopes if grant else (), resources=grant.resources if grant else (),
        expires_at=grant.expires_at if grant else None, clamped_by=clamped_by, denied=denied,
        matched_rules=matched, reasons=reasons, policy_revision=policy.revision, decided_at=now)
    return DelegationOutcome(decision, grant, delegation_audit(decision, request, parties, now))


def delegation_audit(decision: DelegationDecided, request: DelegationRequested,
                     parties: Parties, now: datetime, suffix: str = "") -> AuditRecord:
    """The audit record of a delegation decision, with every input it was decided on."""
    return AuditRecord(
        audit_id=derive_id("audit-delegation", decision.request_id + suffix, decision.agent_id),
        kind=DECIDED_KIND, agent_id=decision.agent_id, occurred_at=now,
        subject_id=decision.request_id, outcome=decision.outcome, reasons=decision.reasons,
        rules=decision.matched_rules, policy_revision=decision.policy_revision,
        inputs={"request": request.model_dump(mode="json"),
                # the parent grant, under the name the audit redacts grant resources by
                "grant": parties.parent.model_dump(mode="json") if parties.parent else None,
                "delegate_class": parties.delegate.agent_class if parties.delegate else None,
                "grant_id": decision.grant_id, "decision": decision.model_dump(mode="json")},
    )
