"""Loader of an escalation rule's ``tiers:`` and ``approval:``. Imports broker.policy, schemas.

Every error names the file, the line and the rule. A tier grants a subset of its rule's scopes
(outright, or under its own ``approval``) for at most its rule's max_duration; an approval names
``quorum`` of M distinct ``approvers`` (``operator:<name>`` or a verifier agent's id, M >= quorum)
and a ``window`` within which they must answer.
"""

from __future__ import annotations

import re
from typing import cast

from broker.policy.cel_inputs import Inputs
from broker.policy.fields import (
    At,
    check_fields,
    condition,
    items,
    mapping,
    optional_duration,
    optional_positive_int,
    scope_list,
    string,
    strings,
)
from broker.policy.model import ApprovalSpec, Tier
from broker.policy.source import LineMap
from schemas.events import AGENT_ID_PATTERN

_TIER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_WINDOW_S = 7 * 86400  # an approval window longer than a week is a typo


def parse_approval(body: LineMap, at: At, rule_scopes: tuple[str, ...],
                   what: str) -> ApprovalSpec | None:
    """The ``approval:`` mapping of a rule or tier (None when absent)."""
    if "approval" not in body:
        return None
    spec = mapping(body, "approval", at)
    check_fields(spec, at, f"the approval of {what}", required=("quorum", "approvers", "window"),
                 optional=("scopes",))
    quorum = cast(int, optional_positive_int(spec, "quorum", at))
    approvers: list[str] = []
    for name, line in strings(spec, "approvers", at, required=True):
        if not re.fullmatch(AGENT_ID_PATTERN, name):
            raise at.error(f"bad approver {name!r}: operator:<name> or a verifier agent's id",
                           line)
        if name in approvers:
            raise at.error(f"approver {name!r} is listed twice (an approver counts once)", line)
        approvers.append(name)
    if quorum > len(approvers):
        raise at.error(f"quorum {quorum} is more than the {len(approvers)} approver(s) listed",
                       spec.line_of("quorum"))
    window = cast(int, optional_duration(spec, "window", at, cap=("a week", MAX_WINDOW_S)))
    scopes = _subset(spec, "scopes", at, rule_scopes, f"the approval of {what}")
    return ApprovalSpec(quorum, tuple(approvers), window, scopes)


def parse_tiers(body: LineMap, at: At, rule_scopes: tuple[str, ...], rule_max_s: int,
                inputs: Inputs) -> tuple[Tier, ...]:
    """The ``tiers:`` list of an escalation rule, in file order (the first that holds wins)."""
    tiers: list[Tier] = []
    for item, line in items(body, "tiers", at, required=False):
        if not isinstance(item, LineMap):
            raise at.error("each item of 'tiers' must be a mapping (a tier)", line)
        check_fields(item, at, "a tier", required=("name", "when"),
                     optional=("scopes", "max_duration", "approval", "description"))
        name = string(item, "name", at)
        if not _TIER_RE.fullmatch(name) or any(t.name == name for t in tiers):
            raise at.error(f"bad or duplicate tier name {name!r}", item.line_of("name"))
        what = f"tier {name!r}"
        scopes = _subset(item, "scopes", at, rule_scopes, what)
        approval = parse_approval(item, at, rule_scopes, what)
        if not scopes and approval is None:
            raise at.error(f"{what} grants nothing: give it scopes or an approval "
                           "(a band that denies is simply left out)", item.line)
        if approval is not None and not (approval.scopes or scopes):
            raise at.error(f"the approval of {what} covers no scope", item.line_of("approval"))
        tiers.append(Tier(
            name=name, when=condition(item, at, "escalation", inputs), scopes=scopes,
            max_duration_s=optional_duration(item, "max_duration", at,
                                             cap=("the rule's max_duration", rule_max_s)),
            approval=approval))
    if "tiers" in body and not tiers:
        raise at.error("'tiers' must list at least one tier", body.line_of("tiers"))
    return tuple(tiers)


def _subset(body: LineMap, key: str, at: At, allowed: tuple[str, ...],
            what: str) -> tuple[str, ...]:
    scopes = scope_list(body, key, at, allow_glob=False, what=f"{what}'s scopes", required=False)
    for scope, line in scopes:
        if scope not in allowed:
            raise at.error(f"scope {scope!r} of {what} is not among its rule's scopes "
                           f"({', '.join(allowed)})", line)
    return tuple(dict.fromkeys(s for s, _ in scopes))
