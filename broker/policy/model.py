"""Policy data: CEL conditions, rules, classes, results. Imports cel, pydantic, schemas, stdlib.

Everything here is immutable and built once per policy revision by ``broker.policy.loader``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import cel
from pydantic import BaseModel, ConfigDict

from schemas.events import ScopeDenial

# Errors the native CEL runtime raises for a missing field, a type mismatch, an undefined
# function, overflow or division by zero. Anything else is a bug and must propagate.
CEL_RUNTIME_ERRORS: tuple[type[BaseException], ...] = (
    ArithmeticError, LookupError, TypeError, ValueError, RuntimeError,
)

# Rule ids the evaluator itself uses in denials; a policy may not reuse them.
UNKNOWN_AGENT = "unknown-agent"
DEFAULT_DENY = "default-deny"
CEILING_PREFIX = "ceiling:"
RATE_LIMIT_PREFIX = "rate-limit:"
APPROVAL_EXPIRED = "approval-expired"
APPROVAL_DENIED = "approval-denied"
APPROVAL_UNSATISFIABLE = "approval-unsatisfiable"
RESERVED_RULE_IDS = frozenset({UNKNOWN_AGENT, DEFAULT_DENY, APPROVAL_EXPIRED, APPROVAL_DENIED,
                               APPROVAL_UNSATISFIABLE})

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def format_duration(seconds: int) -> str:
    """Seconds in the largest exact unit: 20 -> '20s', 900 -> '15m', 7200 -> '2h', 90 -> '90s'."""
    for suffix, size in _UNITS:
        if seconds and seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


class CelInputs:
    """The CEL variables of one decision, each converted into CEL once and only if read.

    Converting a request or a profile into CEL values costs far more than evaluating a typical
    condition, so a variable is built (``make()``) and added on the first condition that reads it.
    """

    def __init__(self, makers: Mapping[str, Callable[[], object]]) -> None:
        self._makers = makers
        self._context = cel.Context()
        self._added: set[str] = set()

    def context_for(self, names: frozenset[str]) -> cel.Context:
        """The shared context, holding at least the variables in ``names`` that exist."""
        for name in names - self._added:
            make = self._makers.get(name)
            if make is not None:  # a name bound by a comprehension macro has no maker
                self._context.add_variable(name, make())
            self._added.add(name)
        return self._context


@dataclass(frozen=True)
class Condition:
    """A CEL expression compiled once per revision, with the variables it references."""

    source: str
    program: cel.Program
    variables: frozenset[str]

    def check(self, inputs: CelInputs) -> tuple[bool, str | None]:
        """(value, None) when the expression evaluates to a bool, else (False, error text)."""
        try:
            value = self.program.execute(inputs.context_for(self.variables))
        except CEL_RUNTIME_ERRORS as exc:
            return False, f"{type(exc).__name__}: {_first_line(exc)}"
        if not isinstance(value, bool):
            return False, f"condition returned {type(value).__name__}, not bool"
        return value, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


@dataclass(frozen=True)
class RateRule:
    """At most ``requests`` escalation requests per ``per_s`` seconds for each agent of a class."""

    requests: int
    per_s: int
    rule: str  # the rule id denials name: "rate-limit:<class>"

    def describe(self) -> str:
        """'20 requests per 1s'."""
        return f"{self.requests} requests per {format_duration(self.per_s)}"


QUOTA_ESCALATIONS = "quota:escalations"  # the rule a denial over a tenant's request rate names
QUOTA_ACTIVE_GRANTS = "quota:active-grants"  # ... over its active grants


@dataclass(frozen=True)
class Quotas:
    """A bundle's ``quotas``: limits on all its agents together (a tenant's, in its bundle).

    ``escalations``: requests per period across the bundle's agents; ``active_grants``: grants
    live at once. None: no limit.
    """

    escalations: RateRule | None = None
    active_grants: int | None = None

    @property
    def any(self) -> bool:
        """Whether anything is limited."""
        return self.escalations is not None or self.active_grants is not None


@dataclass(frozen=True)
class AgentClass:
    """A kind of agent: what it always holds (baseline) and what it may ever hold (ceiling)."""

    name: str
    baseline: tuple[str, ...]
    ceiling: tuple[str, ...]
    description: str = ""
    rate_limit: RateRule | None = None


@dataclass(frozen=True)
class ApprovalSpec:
    """``quorum`` of ``approvers`` must approve within ``window_s`` before anything is granted.

    ``scopes``: the scopes that need it (empty: every scope of its rule, or of its tier).
    """

    quorum: int
    approvers: tuple[str, ...]
    window_s: int
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tier:
    """One band of a graduated rule: granted outright (``scopes``) or after ``approval``."""

    name: str
    when: Condition
    scopes: tuple[str, ...]
    max_duration_s: int | None = None
    approval: ApprovalSpec | None = None


@dataclass(frozen=True)
class ApprovalNeed:
    """What a request needs before it is granted: the merged approval of its granting rules."""

    quorum: int
    approvers: tuple[str, ...]
    window_s: int
    scopes: tuple[str, ...]  # every scope the approval would grant (the whole request's grant)
    rules: tuple[str, ...]  # the rules (or "rule/tier") that asked for it


@dataclass(frozen=True)
class EscalationRule:
    """Grants concrete scopes to agents of some classes when its condition holds."""

    id: str
    agent_classes: tuple[str, ...]
    scopes: tuple[str, ...]
    when: Condition
    max_duration_s: int | None = None
    resources: Literal["required", "any"] = "required"
    max_resources: int | None = None
    description: str = ""
    # Cumulative life of a grant across renewals (None: the rule's max_duration, no renewal
    # past the first window).
    max_total_duration_s: int | None = None
    # (scope, at most this many uses over a grant's life), for some of the rule's scopes.
    budgets: tuple[tuple[str, int], ...] = ()
    tiers: tuple[Tier, ...] = ()  # graduated grants: the first tier whose condition holds
    approval: ApprovalSpec | None = None  # a rule without tiers that grants only on approval


@dataclass(frozen=True)
class DenyRule:
    """Denies scopes matching its globs when its condition holds (or fails to evaluate)."""

    id: str
    scopes: tuple[str, ...]
    when: Condition
    reason: str
    agent_classes: tuple[str, ...] | None = None  # None: every class
    description: str = ""


@dataclass(frozen=True)
class RevocationRule:
    """Revokes every grant of a signal's subject agent when its condition holds."""

    id: str
    when: Condition
    action: Literal["revoke_all"] = "revoke_all"
    quarantine_s: int = 0
    reason: str = ""
    description: str = ""


@dataclass(frozen=True)
class RiskContext:
    """Risk inputs of one decision: the agent's live risk and the request's own score."""

    agent: float = 0.0
    request: float = 0.0


class RiskInputs(BaseModel):
    """The ``risk`` variable of escalation and deny conditions (its fields are declared to the
    type checker from this model): the agent's live risk, the request's own score, the larger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent: float
    request: float
    score: float

    @classmethod
    def of(cls, risk: RiskContext) -> RiskInputs:
        """The condition inputs of one decision's risk."""
        agent, request = float(risk.agent), float(risk.request)
        return cls(agent=agent, request=request, score=max(agent, request))


@dataclass(frozen=True)
class Evaluation:
    """The outcome of evaluating one escalation request against one policy revision."""

    granted: tuple[str, ...]
    denied: tuple[ScopeDenial, ...]
    resources: tuple[str, ...]
    duration_s: int
    clamped_by: str | None
    matched_rules: tuple[str, ...]
    reasons: tuple[str, ...]
    policy_revision: str
    tiers: tuple[str, ...] = ()  # "<rule>/<tier>" of each graduated tier that matched
    approval: ApprovalNeed | None = None  # set: nothing is granted until approvers agree
    budgets: tuple[tuple[str, int], ...] = ()  # of granted scopes, from their granting rules


@dataclass(frozen=True)
class RiskAction:
    """What a risk signal means for its subject agent's grants."""

    revoke: bool
    rule: str | None
    reason: str
    quarantine_s: int = 0
