"""Delegation rules: which agent classes may hand which scopes to which. Imports broker.policy.

A ``delegation_rules`` section of the Policy document; without a rule that covers a scope, a
delegation of it is denied (default deny). A rule names the delegating classes
(``from_classes``), the receiving classes (``to_classes``), the scopes (globs allowed) and a
``max_duration`` for the child grant (never past the parent's expiry in any case), and
optionally an ``approval`` (quorum, approvers, window, as escalation rules have): the
delegation is then held until enough approvers agree (``broker.grants.delegation_hold``).
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.policy.fields import At, check_fields, optional_duration, scope_list, string, strings
from broker.policy.graduated_loader import parse_approval
from broker.policy.model import AgentClass, ApprovalSpec
from broker.policy.source import LineMap


@dataclass(frozen=True)
class DelegationRule:
    """Agents of ``from_classes`` may delegate ``scopes`` to agents of ``to_classes``."""

    id: str
    from_classes: tuple[str, ...]
    to_classes: tuple[str, ...]
    scopes: tuple[str, ...]
    max_duration_s: int | None = None
    description: str = ""
    approval: ApprovalSpec | None = None  # set: held until approvers agree


def parse_delegation(body: LineMap, at: At, classes: dict[str, AgentClass],
                     max_s: int) -> DelegationRule:
    """One delegation rule, checked against the defined classes and the default maximum."""
    check_fields(body, at, "a delegation rule",
                 required=("id", "from_classes", "to_classes", "scopes"),
                 optional=("description", "max_duration", "approval"))
    refs = {}
    for key in ("from_classes", "to_classes"):
        names = strings(body, key, at, required=True)
        for name, line in names:
            if name not in classes:
                raise at.error(f"unknown agent class {name!r}; defined: "
                               f"{', '.join(classes) or '-'}", line)
        refs[key] = tuple(dict.fromkeys(n for n, _ in names))
    scopes = scope_list(body, "scopes", at, allow_glob=True, what="a delegation rule's scopes")
    return DelegationRule(
        id=string(body, "id", at), from_classes=refs["from_classes"],
        to_classes=refs["to_classes"], scopes=tuple(dict.fromkeys(s for s, _ in scopes)),
        max_duration_s=optional_duration(body, "max_duration", at,
                                         cap=("defaults.max_duration", max_s)),
        description=string(body, "description", at, default=""),
        approval=parse_approval(body, at, tuple(s for s, _ in scopes), "a delegation rule"),
    )
