"""Usage budgets of an escalation rule, parsed strictly. Imports broker.policy.fields/source.

``budgets: {payments:accounts.freeze: 3, crm:customer.pii.read: 50}`` on an escalation rule: a
grant issued by the rule allows at most that many uses of each named scope over its life. Every
key must be one of the rule's own scopes and every value a positive integer; an error names the
file, the line and the rule.
"""

from __future__ import annotations

from broker.policy.fields import At, mapping
from broker.policy.source import LineMap

MAX_BUDGET = 1_000_000


def budgets_of(body: LineMap, at: At, scopes: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """The rule's budgets as (scope, limit) pairs in declaration order; () when absent."""
    if "budgets" not in body:
        return ()
    table = mapping(body, "budgets", at)
    if not table:
        raise at.error("'budgets' must name at least one scope (or be left out)",
                       body.line_of("budgets"))
    out: list[tuple[str, int]] = []
    for scope, limit in table.items():
        line = table.line_of(scope)
        if scope not in scopes:
            raise at.error(f"budget for {scope!r}, which is not one of this rule's scopes "
                           f"({', '.join(scopes)})", line)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_BUDGET:
            raise at.error(f"budget of {scope!r} must be a whole number of uses from 1 to "
                           f"{MAX_BUDGET}; got {limit!r}", line)
        out.append((str(scope), limit))
    return tuple(out)
