"""Pure decisions of one policy revision. Imports schemas, broker.scopes/policy.model, stdlib.

Per requested scope, in order: unknown agent; outside the agent's ceiling; a deny rule whose
condition holds (deny overrides allow; a condition that errors counts as true: fail closed); an
escalation rule of the agent's class covering the scope whose condition holds (an error counts
as false), subject to its resource limits; otherwise default deny. Time is an argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from broker.policy import graduated
from broker.policy.delegation import DelegationRule
from broker.policy.detectors import Detectors
from broker.policy.lifecycle import AgentLifecycle
from broker.policy.model import (
    APPROVAL_UNSATISFIABLE,
    CEILING_PREFIX,
    DEFAULT_DENY,
    UNKNOWN_AGENT,
    AgentClass,
    ApprovalSpec,
    CelInputs,
    Condition,
    DenyRule,
    EscalationRule,
    Evaluation,
    Quotas,
    RateRule,
    RevocationRule,
    RiskAction,
    RiskContext,
    RiskInputs,
    Tier,
    format_duration,
)
from broker.scopes import matches, within
from schemas.events import AgentProfile, EscalationRequested, RiskObserved, ScopeDenial


@dataclass(frozen=True)
class _Outcome:
    """The decision for one scope: granted by ``rule``, or denied by ``denial``."""

    scope: str
    rule: EscalationRule | None = None
    denial: ScopeDenial | None = None
    fired: str | None = None  # id of the deny rule that fired, if that is what denied
    tier: Tier | None = None  # the graduated tier of ``rule`` that granted it
    approval: tuple[str, ApprovalSpec] | None = None  # (who asks, what) when it needs approval


class Policy:
    """One loaded, compiled revision of a policy bundle; ``evaluate``/``on_risk`` are pure."""

    def __init__(self, *, name: str, revision: str, source: str, default_max_duration_s: int,
                 classes: Mapping[str, AgentClass], escalation_rules: tuple[EscalationRule, ...],
                 deny_rules: tuple[DenyRule, ...], revocation_rules: tuple[RevocationRule, ...],
                 agents: tuple[AgentProfile, ...],
                 default_max_total_duration_s: int | None = None,
                 files: tuple[tuple[str, bytes], ...] = (),
                 detectors: Detectors | None = None,
                 lifecycle: AgentLifecycle | None = None,
                 delegation_rules: tuple[DelegationRule, ...] = (),
                 degraded_grace_s: Mapping[str, int] | None = None,
                 quotas: Quotas | None = None) -> None:
        self.name = name
        self.quotas = quotas or Quotas()  # limits on all the bundle's agents together
        # Grace bounds by namespace while its views cannot prove freshness (absent: fail closed).
        self.degraded_grace_s = dict(degraded_grace_s or {})
        self.lifecycle = lifecycle or AgentLifecycle()  # key age, dormancy, registration limits
        self.delegation_rules = delegation_rules  # default deny: no rule, no delegation
        self.detectors = detectors  # behaviour detectors (None: nothing is watched)
        self.files = files  # the bundle's (file name, bytes), as hashed into the revision
        self.revision = revision
        self.source = source
        self.default_max_duration_s = default_max_duration_s
        # Caps every grant's cumulative life across renewals (defaults to max_duration).
        self.default_max_total_duration_s = max(
            default_max_total_duration_s or default_max_duration_s, default_max_duration_s)
        self.classes = dict(classes)
        self.escalation_rules = escalation_rules
        self.deny_rules = deny_rules
        self.revocation_rules = revocation_rules
        self._agents = {agent.agent_id: agent for agent in agents}
        # Every grant is capped by defaults.max_duration; a rule may only shorten it.
        # With renewals, the longest a grant can live is the largest cumulative maximum.
        self.max_grant_duration_s = max(
            (self.total_limit(r)[0] for r in escalation_rules), default=default_max_duration_s)
        self._rules_by_class = {
            name: tuple(r for r in escalation_rules if name in r.agent_classes) for name in classes
        }

    def total_limit(self, rule: EscalationRule) -> tuple[int, str]:
        """The cumulative life a grant by ``rule`` may reach through renewals, and its source."""
        first = min(rule.max_duration_s or self.default_max_duration_s,
                    self.default_max_duration_s)
        if rule.max_total_duration_s is not None:
            limit = min(rule.max_total_duration_s, self.default_max_total_duration_s)
            return limit, f"rule {rule.id}: max_total_duration {format_duration(limit)}"
        return first, (f"rule {rule.id}: max_total_duration not set, so its max_duration "
                       f"{format_duration(first)}")

    def rule(self, rule_id: str) -> EscalationRule | None:
        """The escalation rule with id ``rule_id``."""
        return next((r for r in self.escalation_rules if r.id == rule_id), None)

    def escalation_rules_for(self, agent_class: str) -> tuple[EscalationRule, ...]:
        """The escalation rules that apply to ``agent_class``, in file order."""
        return self._rules_by_class.get(agent_class, ())

    def __repr__(self) -> str:
        return f"Policy(name={self.name!r}, revision={self.revision!r}, source={self.source!r})"

    def agent(self, agent_id: str) -> AgentProfile | None:
        """The profile of ``agent_id`` from the bundle's agent directory, if listed."""
        return self._agents.get(agent_id)

    def rate_limit(self, agent: AgentProfile | None) -> RateRule | None:
        """The request rate limit of the agent's class, if its class sets one."""
        agent_class = self.classes.get(agent.agent_class) if agent is not None else None
        return agent_class.rate_limit if agent_class is not None else None

    def agents(self) -> tuple[AgentProfile, ...]:
        """Every agent of the bundle's directory, in file order."""
        return tuple(self._agents.values())

    def evaluate(self, request: EscalationRequested, agent: AgentProfile | None,
                 risk: RiskContext, now: datetime) -> Evaluation:
        """Decide each requested scope; grant the allowed ones for one clamped duration."""
        _require_aware(now)
        scopes = tuple(dict.fromkeys(request.scopes))
        if agent is None or agent.agent_id != request.agent_id:
            return self._unknown_agent(request, scopes, agent)
        inputs = CelInputs({
            "request": lambda: request.model_dump(mode="json"),
            "agent": lambda: agent.model_dump(mode="json"),
            "risk": lambda: RiskInputs.of(risk).model_dump(),
            "now": lambda: now,
        })
        decider = _ScopeDecider(self, request, agent, inputs)
        return self._summarize(request, [decider.decide(scope) for scope in scopes])

    def on_risk(self, signal: RiskObserved, agent: AgentProfile | None,
                now: datetime) -> RiskAction:
        """The first revocation rule (file order) whose condition holds decides; else no-op."""
        _require_aware(now)
        if signal.subject_agent_id is None:
            return RiskAction(False, None, f"signal {signal.signal_id} ({signal.kind}) names no "
                              "subject agent; only signals about an agent revoke its grants")
        if agent is not None and agent.agent_id != signal.subject_agent_id:
            agent = None  # never judge one agent by another's profile
        profile = agent
        inputs = CelInputs({
            "signal": lambda: signal.model_dump(mode="json"),
            "agent": lambda: profile.model_dump(mode="json") if profile is not None else None,
            "now": lambda: now,
        })
        seen = f"signal {signal.kind} severity {signal.severity:g} from {signal.source}"
        for rule in self.revocation_rules:
            value, error = rule.when.check(inputs)
            if value or error is not None:
                why = rule.reason or rule.description or f"condition {rule.when.source}"
                if error is not None:
                    why += f" (condition could not be evaluated, failing closed: {error})"
                return RiskAction(True, rule.id, f"rule {rule.id}: {why}; {seen}",
                                  rule.quarantine_s)
        return RiskAction(False, None, f"no revocation rule matched {seen}")

    def _unknown_agent(self, request: EscalationRequested, scopes: tuple[str, ...],
                       agent: AgentProfile | None) -> Evaluation:
        if agent is None:
            reason = f"agent {request.agent_id} is not known to policy {self.name}"
        else:
            reason = f"the profile given is of agent {agent.agent_id}, not {request.agent_id}"
        denied = tuple(ScopeDenial(scope=s, rule=UNKNOWN_AGENT, reason=reason) for s in scopes)
        return Evaluation((), denied, (), 0, None, (), (f"denied all scopes: {reason}",),
                          self.revision)

    def _summarize(self, request: EscalationRequested, outcomes: list[_Outcome]) -> Evaluation:
        granting = tuple(dict.fromkeys(o.rule for o in outcomes if o.rule is not None))
        granted = tuple(o.scope for o in outcomes if o.rule is not None)
        reasons = [_describe(o) for o in outcomes]
        duration, clamped_by = 0, None
        resources: tuple[str, ...] = ()
        tiers = tuple(dict.fromkeys(graduated.tier_key(o.rule, o.tier) for o in outcomes
                                    if o.rule is not None and o.tier is not None))
        reasons += [f"tier {t} matched" for t in tiers]
        if granted:
            duration, clamped_by = self._clamp(request.duration_s, granting, tuple(
                o.tier for o in outcomes if o.tier is not None))
            resources = tuple(dict.fromkeys(request.resources))
            reasons.append(f"duration {duration}s" + (f", clamped by {clamped_by}"
                                                      if clamped_by else " as requested"))
            reasons.append(f"narrowed to {len(resources)} resource(s): {', '.join(resources)}"
                           if resources else "not narrowed to resources: every granting rule "
                           "says resources: any and none were requested")
        matched = [o.rule.id if o.rule is not None else o.fired for o in outcomes]
        evaluation = Evaluation(
            granted=granted,
            denied=tuple(o.denial for o in outcomes if o.denial is not None),
            resources=resources, duration_s=duration, clamped_by=clamped_by,
            matched_rules=tuple(dict.fromkeys(m for m in matched if m is not None)),
            reasons=tuple(reasons), policy_revision=self.revision, tiers=tiers,
            budgets=tuple((o.scope, n) for o in outcomes if o.rule is not None
                          for s, n in o.rule.budgets if s == o.scope),
        )
        specs = [o.approval for o in outcomes if o.approval is not None]
        return _withhold(evaluation, specs) if specs else evaluation

    def _clamp(self, requested: int, rules: tuple[EscalationRule, ...],
               tiers: tuple[Tier, ...] = ()) -> tuple[int, str | None]:
        """min(requested, each rule's and tier's max_duration, defaults) and who set the limit."""
        limits = [(r.max_duration_s, f"rule {r.id}") for r in rules if r.max_duration_s]
        limits += [(t.max_duration_s, f"tier {t.name}") for t in tiers if t.max_duration_s]
        limits.append((self.default_max_duration_s, "defaults"))
        limit, by = min(limits, key=lambda item: item[0])  # first minimum: rules before defaults
        if requested <= limit:
            return requested, None
        return limit, f"{by}: max_duration {format_duration(limit)} (requested {requested}s)"


class _ScopeDecider:
    """Decides scopes of one request; each condition is evaluated at most once per request."""

    def __init__(self, policy: Policy, request: EscalationRequested, agent: AgentProfile,
                 inputs: CelInputs) -> None:
        self._policy = policy
        self._agent = agent
        self._inputs = inputs
        self._resources = len(set(request.resources))
        self._results: dict[str, tuple[bool, str | None]] = {}

    def _check(self, rule_id: str, when: Condition) -> tuple[bool, str | None]:
        if rule_id not in self._results:
            self._results[rule_id] = when.check(self._inputs)
        return self._results[rule_id]

    def decide(self, scope: str) -> _Outcome:
        agent_class = self._agent.agent_class
        if not within(scope, self._agent.ceiling):
            ceiling = ", ".join(self._agent.ceiling) or "(empty)"
            return _deny(scope, f"{CEILING_PREFIX}{agent_class}",
                         f"outside the ceiling of class {agent_class}: {ceiling}")
        denied = self._deny_rules(scope, agent_class)
        if denied is not None:
            return denied
        return self._escalation_rules(scope, agent_class)

    def _deny_rules(self, scope: str, agent_class: str) -> _Outcome | None:
        for rule in self._policy.deny_rules:
            if rule.agent_classes is not None and agent_class not in rule.agent_classes:
                continue
            if not any(matches(glob, scope) for glob in rule.scopes):
                continue
            value, error = self._check(rule.id, rule.when)
            if error is not None:
                reason = (f"{rule.reason} (condition could not be evaluated, failing closed: "
                          f"{error})")
                return _deny(scope, rule.id, reason, fired=True)
            if value:
                return _deny(scope, rule.id, rule.reason, fired=True)
        return None

    def _escalation_rules(self, scope: str, agent_class: str) -> _Outcome:
        considered: list[str] = []
        limited: _Outcome | None = None
        for rule in self._policy.escalation_rules_for(agent_class):
            if scope not in rule.scopes:
                continue
            value, error = self._check(rule.id, rule.when)
            if not value:
                detail = f"error: {error}" if error is not None else "false"
                considered.append(f"{rule.id} (condition {detail}: {rule.when.source})")
                continue
            problem = self._resource_problem(rule)
            if problem is not None:
                limited = limited or _deny(scope, rule.id, problem)
                continue
            granted, why = self._graduated(rule, scope)
            if granted is not None:
                return granted
            considered.append(why)
        if limited is not None:
            return limited
        if not considered:
            return _deny(scope, DEFAULT_DENY,
                         f"no escalation rule for class {agent_class} covers {scope}")
        return _deny(scope, DEFAULT_DENY,
                     "no rule's condition held; considered: " + "; ".join(considered))

    def _graduated(self, rule: EscalationRule, scope: str) -> tuple[_Outcome | None, str]:
        """The rule's grant of ``scope`` through its tier or approval, or why it gives none."""
        if not rule.tiers:
            spec = graduated.rule_approval(rule, scope)
            return _Outcome(scope, rule=rule, approval=(rule.id, spec) if spec else None), ""
        tier, why = graduated.pick_tier(rule, self._check)
        if tier is None:
            return None, why
        covered, spec = graduated.scope_in_tier(rule, tier, scope)
        if not covered:
            return None, f"tier {graduated.tier_key(rule, tier)} does not cover {scope}"
        key = graduated.tier_key(rule, tier)
        return _Outcome(scope, rule=rule, tier=tier, approval=(key, spec) if spec else None), ""

    def _resource_problem(self, rule: EscalationRule) -> str | None:
        if rule.resources == "required" and self._resources == 0:
            return f"rule {rule.id} grants only on named resources and the request names none"
        if rule.max_resources is not None and self._resources > rule.max_resources:
            return (f"{self._resources} resources requested; rule {rule.id} allows at most "
                    f"{rule.max_resources}")
        return None


def _deny(scope: str, rule: str, reason: str, *, fired: bool = False) -> _Outcome:
    return _Outcome(scope, denial=ScopeDenial(scope=scope, rule=rule, reason=reason),
                    fired=rule if fired else None)


def _withhold(evaluation: Evaluation, specs: list[tuple[str, ApprovalSpec]]) -> Evaluation:
    """Nothing granted yet: the would-be grant waits for approval (or is denied if it cannot)."""
    need, problem = graduated.merge(specs, evaluation.granted)
    rule = specs[0][0].split("/")[0] if need is not None else APPROVAL_UNSATISFIABLE
    why = graduated.describe(need) if need is not None else problem
    held = tuple(ScopeDenial(scope=s, rule=rule, reason=why) for s in evaluation.granted)
    return dataclasses.replace(
        evaluation, granted=(), denied=evaluation.denied + held, approval=need,
        reasons=(*evaluation.reasons, why),
        matched_rules=tuple(dict.fromkeys((*evaluation.matched_rules, rule))))


def _describe(outcome: _Outcome) -> str:
    if outcome.rule is not None and outcome.approval is not None:
        return f"{outcome.scope} needs approval ({outcome.approval[0]})"
    if outcome.rule is not None:
        return f"granted {outcome.scope} by rule {outcome.rule.id}"
    assert outcome.denial is not None
    return f"denied {outcome.scope} by {outcome.denial.rule}: {outcome.denial.reason}"


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime (UTC)")
