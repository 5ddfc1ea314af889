"""Graduated grants and approval rules (pure helpers of evaluate). Imports broker.policy.model.

A rule with ``tiers`` grants through the first tier whose condition holds: a tier lists the
scopes it grants outright and, under ``approval``, the scopes it grants only once ``quorum`` of
its ``approvers`` agree. A rule with ``approval`` (and no tiers) grants only on approval. When
any scope of a request needs approval, the whole request waits: one grant, one expiry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from broker.policy.model import (
    ApprovalNeed,
    ApprovalSpec,
    Condition,
    EscalationRule,
    Tier,
    format_duration,
)

Check = Callable[[str, Condition], tuple[bool, str | None]]


def tier_key(rule: EscalationRule, tier: Tier) -> str:
    """How a tier is named in decisions and audits: ``<rule>/<tier>``."""
    return f"{rule.id}/{tier.name}"


def approval_scopes(spec: ApprovalSpec, default: Sequence[str]) -> tuple[str, ...]:
    """The scopes an approval covers (its own list, else the tier's or rule's scopes)."""
    return spec.scopes or tuple(default)


def pick_tier(rule: EscalationRule, check: Check) -> tuple[Tier | None, str]:
    """The first tier whose condition holds (an error counts as false), or why none did."""
    seen: list[str] = []
    for tier in rule.tiers:
        value, error = check(tier_key(rule, tier), tier.when)
        if value:
            return tier, ""
        seen.append(f"{tier.name}: " + (f"error: {error}" if error else tier.when.source))
    return None, f"no tier of rule {rule.id} matched ({'; '.join(seen)})"


def scope_in_tier(rule: EscalationRule, tier: Tier,
                  scope: str) -> tuple[bool, ApprovalSpec | None]:
    """(covered, the approval it needs): approval scopes need approval even if also listed."""
    spec = tier.approval
    if spec is not None and scope in approval_scopes(spec, tier.scopes):
        return True, spec
    return scope in tier.scopes, None


def rule_approval(rule: EscalationRule, scope: str) -> ApprovalSpec | None:
    """The approval a rule without tiers asks for ``scope`` (None: granted outright)."""
    spec = rule.approval
    if spec is not None and scope in approval_scopes(spec, rule.scopes):
        return spec
    return None


def merge(specs: Sequence[tuple[str, ApprovalSpec]],
          scopes: tuple[str, ...]) -> tuple[ApprovalNeed | None, str]:
    """One approval satisfying every rule that asks: the largest quorum, the approvers all of
    them accept, the shortest window. (None, why) when no approver set can reach the quorum."""
    quorum = max(spec.quorum for _, spec in specs)
    approvers = tuple(a for a in specs[0][1].approvers
                      if all(a in spec.approvers for _, spec in specs))
    window = min(spec.window_s for _, spec in specs)
    rules = tuple(dict.fromkeys(name for name, _ in specs))
    if len(approvers) < quorum:
        return None, (f"rules {', '.join(rules)} ask for approval by {quorum} approvers but "
                      f"only {len(approvers)} are accepted by all of them")
    return ApprovalNeed(quorum, approvers, window, scopes, rules), ""


def describe(need: ApprovalNeed) -> str:
    """'needs approval by 2 of 3 (operator:ana, v1, v2) within 10m (rule r/medium)'."""
    return (f"needs approval by {need.quorum} of {len(need.approvers)} "
            f"({', '.join(need.approvers)}) within {format_duration(need.window_s)} "
            f"(asked by {', '.join(need.rules)}); the grant's clock starts at the deciding "
            "approval")
