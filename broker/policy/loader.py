"""Strict bundle loader. Imports pydantic, schemas, broker.errors/scopes/policy, stdlib.

Every error names the file, the line and the rule.

Checks: apiVersion/kind, unknown and missing fields (listing the allowed ones), scope syntax and
globs where they are not allowed, baselines and rule scopes outside a class ceiling, unknown agent
classes, duplicate rule ids and agent ids, durations, CEL that does not compile, that references
a variable its rule kind does not provide, or that does not type-check against those variables'
declared fields (misspelt fields and mismatched types name the column and suggest a fix). Each
CEL expression is compiled once per revision. The ``degraded`` section gives a namespace a
bounded grace (else it fails closed) and names the namespace as the rule of its errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, cast

from pydantic import ValidationError

from broker.errors import PolicyError
from broker.policy.budgets import budgets_of
from broker.policy.cel_inputs import TIMESTAMP, Inputs
from broker.policy.delegation import DelegationRule, parse_delegation
from broker.policy.detectors import Detectors, parse_detectors
from broker.policy.evaluate import Policy
from broker.policy.fields import (
    At,
    check_fields,
    choice,
    condition,
    items,
    mapping,
    optional_duration,
    optional_positive_int,
    scope_list,
    string,
    strings,
)
from broker.policy.graduated_loader import parse_approval, parse_tiers
from broker.policy.lifecycle import AgentLifecycle, parse_lifecycle
from broker.policy.model import (
    QUOTA_ESCALATIONS,
    RATE_LIMIT_PREFIX,
    RESERVED_RULE_IDS,
    AgentClass,
    DenyRule,
    EscalationRule,
    Quotas,
    RateRule,
    RevocationRule,
    RiskInputs,
    format_duration,
)
from broker.policy.source import Bundle, Document, LineList, LineMap, bundle_of, read_bundle
from broker.scopes import within
from schemas.events import AgentProfile, EscalationRequested, RiskObserved

API_VERSION = "permbroker/v1"
KINDS = ("Policy", "Agents")
# What each kind of condition reads (Policy.evaluate and Policy.on_risk build exactly these):
# each model's fields and types are declared to the CEL type checker.
ESCALATION_INPUTS = Inputs((("request", EscalationRequested), ("agent", AgentProfile),
                            ("risk", RiskInputs), ("now", TIMESTAMP)))
DENY_INPUTS = ESCALATION_INPUTS
REVOCATION_INPUTS = Inputs((("signal", RiskObserved), ("agent", AgentProfile), ("now", TIMESTAMP)))

_RULE_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CLASS_RE = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_FROM_CLASS = ("baseline", "ceiling")  # profile fields filled from the agent class
_AGENT_REQUIRED = ("agent_id", "agent_class", "owner", "model")
_AGENT_OPTIONAL = tuple(f for f in AgentProfile.model_fields
                        if f not in _AGENT_REQUIRED and f not in _FROM_CLASS)


@dataclass(frozen=True)
class _PolicyDoc:
    name: str
    max_duration_s: int
    max_total_s: int | None
    classes: dict[str, AgentClass]
    escalation: tuple[EscalationRule, ...]
    deny: tuple[DenyRule, ...]
    revocation: tuple[RevocationRule, ...]
    detectors: Detectors | None = None
    lifecycle: AgentLifecycle | None = None
    delegation: tuple[DelegationRule, ...] = ()
    degraded: dict[str, int] | None = None
    quotas: Quotas = field(default_factory=Quotas)


def load_policy(path: str | Path) -> Policy:
    """Read, validate and compile a bundle (a directory of .yaml files, or one file)."""
    return compile_bundle(read_bundle(path))


def load_policy_files(files: list[tuple[str, bytes]], source: str, *,
                      check_types: bool = True) -> Policy:
    """Validate and compile a bundle given as (file name, bytes), e.g. from the audit log.

    ``check_types=False`` loads a revision that already ran (recorded in the audit log) as it
    ran, even if a condition does not type-check: replay must reproduce its decisions.
    """
    return compile_bundle(bundle_of(files, source), check_types=check_types)


def compile_bundle(bundle: Bundle, *, check_types: bool = True) -> Policy:
    """Validate and compile a bundle already read."""
    policy_doc, agent_docs = _split_kinds(bundle.documents, bundle.source)
    parsed = _parse_policy(policy_doc, check_types)
    agents = _parse_agents(agent_docs, parsed.classes)
    return Policy(
        name=parsed.name, revision=bundle.revision, source=bundle.source,
        default_max_duration_s=parsed.max_duration_s, classes=parsed.classes,
        default_max_total_duration_s=parsed.max_total_s,
        escalation_rules=parsed.escalation, deny_rules=parsed.deny,
        revocation_rules=parsed.revocation, agents=agents, files=bundle.files,
        detectors=parsed.detectors, lifecycle=parsed.lifecycle,
        delegation_rules=parsed.delegation, degraded_grace_s=parsed.degraded,
        quotas=parsed.quotas,
    )


def _split_kinds(documents: tuple[Document, ...], source: str) -> tuple[Document, list[Document]]:
    policies: list[Document] = []
    agents: list[Document] = []
    for doc in documents:
        at, body = At(doc.file), doc.body
        for key, expected in (("apiVersion", (API_VERSION,)), ("kind", KINDS)):
            if key not in body:
                raise at.error(f"missing field {key!r}; expected {' or '.join(expected)}",
                               body.line)
            if body[key] not in expected:
                raise at.error(f"unknown {key} {body[key]!r}; expected {' or '.join(expected)}",
                               body.line_of(key))
        (policies if body["kind"] == "Policy" else agents).append(doc)
    if not policies:
        raise PolicyError("the bundle holds no 'kind: Policy' document", file=source)
    if len(policies) > 1:
        first, second = policies[0], policies[1]
        raise At(second.file).error(
            f"a second 'kind: Policy' document (the first is at {first.file}:{first.body.line});"
            " a bundle holds exactly one", second.body.line)
    return policies[0], agents


def _parse_policy(doc: Document, check_types: bool) -> _PolicyDoc:
    at, body = At(doc.file, check_types=check_types), doc.body
    check_fields(body, at, "a Policy document",
                 required=("apiVersion", "kind", "name", "defaults", "agent_classes"),
                 optional=("description", "escalation_rules", "deny_rules", "revocation_rules",
                           "detectors", "lifecycle", "delegation_rules", "degraded",
                           "quotas"))
    defaults = mapping(body, "defaults", at)
    check_fields(defaults, at, "defaults", required=("max_duration",),
                 optional=("max_total_duration",))
    max_s = cast(int, optional_duration(defaults, "max_duration", at))  # required just above
    total_s = optional_duration(defaults, "max_total_duration", at)
    if total_s is not None and total_s < max_s:
        raise at.error(f"max_total_duration {format_duration(total_s)} is shorter than "
                       f"max_duration {format_duration(max_s)}",
                       defaults.line_of("max_total_duration"))
    classes_map = mapping(body, "agent_classes", at)
    classes = {name: _parse_class(name, classes_map, at) for name in classes_map}
    seen: dict[str, str] = {}
    escalation = [_parse_escalation(r, a, classes, max_s, total_s or max_s)
                  for r, a in _rules(body, "escalation_rules", at, seen)]
    deny = [_parse_deny(r, a, classes) for r, a in _rules(body, "deny_rules", at, seen)]
    revocation = [_parse_revocation(r, a) for r, a in _rules(body, "revocation_rules", at, seen)]
    delegation = [parse_delegation(r, a, classes, max_s)
                  for r, a in _rules(body, "delegation_rules", at, seen)]
    return _PolicyDoc(string(body, "name", at), max_s, total_s, classes, tuple(escalation),
                      tuple(deny), tuple(revocation), parse_detectors(body, at, classes),
                      parse_lifecycle(body, at), tuple(delegation), parse_degraded(body, at),
                      _quotas(body, at))


def _parse_class(name: str, classes_map: LineMap, at: At) -> AgentClass:
    body = classes_map[name]
    if not _CLASS_RE.fullmatch(name):
        raise at.error(f"bad agent class name {name!r}: lowercase letters, digits and '-'",
                       classes_map.line_of(name))
    if not isinstance(body, LineMap):
        raise at.error(f"agent class {name!r} must be a mapping", classes_map.line_of(name))
    what = f"agent class {name!r}"
    check_fields(body, at, what, required=("ceiling",),
                 optional=("baseline", "description", "rate_limit"))
    ceiling = tuple(s for s, _ in scope_list(body, "ceiling", at, allow_glob=True,
                                             what=f"the ceiling of {what}"))
    baseline = scope_list(body, "baseline", at, allow_glob=False, required=False,
                          what=f"the baseline of {what}")
    for scope, line in baseline:
        if not within(scope, ceiling):
            raise at.error(f"baseline scope {scope!r} of {what} is outside its ceiling "
                           f"({', '.join(ceiling)})", line)
    return AgentClass(name, tuple(s for s, _ in baseline), ceiling,
                      string(body, "description", at, default=""), _rate_limit(name, body, at))


def _rate_limit(name: str, body: LineMap, at: At) -> RateRule | None:
    """``rate_limit: {requests: 20, per: 1s}`` of an agent class, or None when absent."""
    if "rate_limit" not in body:
        return None
    limit = mapping(body, "rate_limit", at)
    check_fields(limit, at, f"the rate_limit of agent class {name!r}",
                 required=("requests", "per"), optional=())
    requests = cast(int, optional_positive_int(limit, "requests", at))  # required just above
    per = cast(int, optional_duration(limit, "per", at))
    return RateRule(requests, per, f"{RATE_LIMIT_PREFIX}{name}")


def _quotas(body: LineMap, at: At) -> Quotas:
    """``quotas: {escalations: {requests: 50, per: 1s}, active_grants: 200}`` (all optional)."""
    if "quotas" not in body:
        return Quotas()
    quotas = mapping(body, "quotas", at)
    check_fields(quotas, at, "quotas", required=(), optional=("escalations", "active_grants"))
    rate = None
    if "escalations" in quotas:
        limit = mapping(quotas, "escalations", at)
        check_fields(limit, at, "the escalations quota", required=("requests", "per"),
                     optional=())
        rate = RateRule(cast(int, optional_positive_int(limit, "requests", at)),
                        cast(int, optional_duration(limit, "per", at)), QUOTA_ESCALATIONS)
    return Quotas(rate, optional_positive_int(quotas, "active_grants", at))


def _rules(body: LineMap, key: str, at: At, seen: dict[str, str]) -> list[tuple[LineMap, At]]:
    """Each rule of a rule list with an At naming it; ids checked well-formed and unique."""
    result: list[tuple[LineMap, At]] = []
    for item, line in items(body, key, at, required=False):
        if not isinstance(item, LineMap):
            raise at.error(f"each item of {key!r} must be a mapping (a rule)", line)
        rule_id = item.get("id")
        rule_at = replace(at, rule=rule_id if isinstance(rule_id, str) else None)
        if "id" in item:
            id_line = item.line_of("id")
            if not isinstance(rule_id, str) or not _RULE_ID_RE.match(rule_id):
                raise rule_at.error(f"bad rule id {rule_id!r}: lowercase letters, digits, '.', "
                                    "'_' and '-', at most 64", id_line)
            if rule_id in seen:
                raise rule_at.error(f"duplicate rule id {rule_id!r} (first defined at "
                                    f"{seen[rule_id]})", id_line)
            if rule_id in RESERVED_RULE_IDS:
                raise rule_at.error(f"rule id {rule_id!r} is reserved", id_line)
            seen[rule_id] = f"{at.file}:{id_line}"
        result.append((item, rule_at))
    return result


def _class_refs(body: LineMap, at: At, classes: dict[str, AgentClass],
                required: bool) -> tuple[str, ...]:
    refs = strings(body, "agent_classes", at, required=required)
    for name, line in refs:
        if name not in classes:
            raise at.error(f"unknown agent class {name!r}; defined: {', '.join(classes) or '-'}",
                           line)
    return tuple(dict.fromkeys(name for name, _ in refs))


def _parse_escalation(body: LineMap, at: At, classes: dict[str, AgentClass],
                      max_s: int, total_s: int) -> EscalationRule:
    check_fields(body, at, "an escalation rule", required=("id", "agent_classes", "scopes", "when"),
                 optional=("description", "max_duration", "resources", "max_resources",
                           "max_total_duration", "budgets", "tiers", "approval"))
    rule_classes = _class_refs(body, at, classes, required=True)
    scopes = scope_list(body, "scopes", at, allow_glob=False, what="an escalation rule's scopes")
    for scope, line in scopes:
        for name in rule_classes:
            if not within(scope, classes[name].ceiling):
                raise at.error(f"scope {scope!r} is outside the ceiling of class {name!r} "
                               f"({', '.join(classes[name].ceiling)})", line)
    rule_max = optional_duration(body, "max_duration", at, cap=("defaults.max_duration", max_s))
    rule_total = optional_duration(body, "max_total_duration", at,
                                   cap=("defaults.max_total_duration", total_s))
    if rule_total is not None and rule_total < (rule_max or max_s):
        raise at.error(f"max_total_duration {format_duration(rule_total)} is shorter than the "
                       f"rule's max_duration {format_duration(rule_max or max_s)}",
                       body.line_of("max_total_duration"))
    rule_scopes = tuple(dict.fromkeys(s for s, _ in scopes))
    if "tiers" in body and "approval" in body:
        raise at.error("a rule has either tiers (each with its own approval) or one approval",
                       body.line_of("approval"))
    return EscalationRule(
        id=string(body, "id", at), agent_classes=rule_classes, scopes=rule_scopes,
        tiers=parse_tiers(body, at, rule_scopes, rule_max or max_s, ESCALATION_INPUTS),
        approval=parse_approval(body, at, rule_scopes, "the rule"),
        when=condition(body, at, "escalation", ESCALATION_INPUTS),
        max_duration_s=rule_max, max_total_duration_s=rule_total,
        resources=cast(Literal["required", "any"],
                       choice(body, "resources", at, ("required", "any"))),
        max_resources=optional_positive_int(body, "max_resources", at),
        description=string(body, "description", at, default=""),
        budgets=budgets_of(body, at, tuple(s for s, _ in scopes)),
    )


def _parse_deny(body: LineMap, at: At, classes: dict[str, AgentClass]) -> DenyRule:
    check_fields(body, at, "a deny rule", required=("id", "scopes", "when", "reason"),
                 optional=("description", "agent_classes"))
    scopes = scope_list(body, "scopes", at, allow_glob=True, what="a deny rule's scopes")
    return DenyRule(
        id=string(body, "id", at), scopes=tuple(s for s, _ in scopes),
        when=condition(body, at, "deny", DENY_INPUTS), reason=string(body, "reason", at),
        agent_classes=(_class_refs(body, at, classes, required=True)
                       if "agent_classes" in body else None),
        description=string(body, "description", at, default=""),
    )


def _parse_revocation(body: LineMap, at: At) -> RevocationRule:
    check_fields(body, at, "a revocation rule", required=("id", "when", "action"),
                 optional=("description", "quarantine", "reason"))
    return RevocationRule(
        id=string(body, "id", at), when=condition(body, at, "revocation", REVOCATION_INPUTS),
        action=cast(Literal["revoke_all"], choice(body, "action", at, ("revoke_all",))),
        quarantine_s=optional_duration(body, "quarantine", at) or 0,
        reason=string(body, "reason", at, default=""),
        description=string(body, "description", at, default=""),
    )


def _parse_agents(docs: list[Document], classes: dict[str, AgentClass]) -> tuple[AgentProfile, ...]:
    seen: dict[str, str] = {}
    agents: list[AgentProfile] = []
    for doc in docs:
        at = At(doc.file)
        check_fields(doc.body, at, "an Agents document", required=("apiVersion", "kind", "agents"),
                     optional=("description",))
        for item, line in items(doc.body, "agents", at, required=False):
            if not isinstance(item, LineMap):
                raise at.error("each item of 'agents' must be a mapping (an agent)", line)
            agent = _parse_agent(item, at, classes)
            if agent.agent_id in seen:
                raise at.error(f"duplicate agent_id {agent.agent_id!r} (first defined at "
                               f"{seen[agent.agent_id]})", item.line_of("agent_id"))
            seen[agent.agent_id] = f"{doc.file}:{item.line_of('agent_id')}"
            agents.append(agent)
    return tuple(agents)


def _parse_agent(body: LineMap, at: At, classes: dict[str, AgentClass]) -> AgentProfile:
    for key in _FROM_CLASS:
        if key in body:
            raise at.error(f"field {key!r} is not set per agent: it comes from the agent class",
                           body.line_of(key))
    check_fields(body, at, "an agent", required=_AGENT_REQUIRED, optional=_AGENT_OPTIONAL)
    name = body["agent_class"]
    agent_class = classes.get(name) if isinstance(name, str) else None
    if agent_class is None:
        raise at.error(f"unknown agent class {name!r}; defined: {', '.join(classes) or '-'}",
                       body.line_of("agent_class"))
    try:
        return AgentProfile.model_validate(
            {**body, "baseline": agent_class.baseline, "ceiling": agent_class.ceiling})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise at.error(f"agent {body['agent_id']!r}: {where}: {first['msg']}",
                       _line_of(body, first["loc"])) from exc


def _line_of(body: LineMap, loc: tuple[int | str, ...]) -> int:
    """The line of the deepest located node on a pydantic error path."""
    line, node = body.line, cast(object, body)
    for part in loc:
        if isinstance(node, LineMap) and isinstance(part, str) and part in node:
            line, node = node.line_of(part), node[part]
        elif isinstance(node, LineList) and isinstance(part, int) and part < len(node):
            line, node = node.lines[part], node[part]
        else:
            break
    return line


# The degraded section: ``<namespace>: fail_closed`` (the default for a namespace not named) or
# ``<namespace>: {grace: <duration>}``: while its grant views cannot prove they are current they
# keep grants delivered before for at most that long, never past a grant's expiry.
FAIL_CLOSED = "fail_closed"
MAX_GRACE_S = 3600  # a longer grace is a typo: an outage that long needs an operator, not a timer
_NAMESPACE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def parse_degraded(body: LineMap, at: At) -> dict[str, int]:
    """Grace bounds in seconds by namespace (absent namespaces fail closed)."""
    if "degraded" not in body:
        return {}
    section = mapping(body, "degraded", at)
    graces: dict[str, int] = {}
    for namespace in section:
        line, at = section.line_of(namespace), replace(at, rule=f"degraded.{namespace}")
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise at.error(f"bad namespace {namespace!r} in degraded: letters, digits, '_' and "
                           "'-' (a scope's part before ':')", line)
        value = section[namespace]
        if value == FAIL_CLOSED:
            continue
        if not isinstance(value, LineMap):
            raise at.error(f"degraded mode of {namespace!r} must be {FAIL_CLOSED!r} or a "
                           "mapping with 'grace: <duration>'", line)
        check_fields(value, at, f"the degraded mode of {namespace!r}", required=("grace",),
                     optional=())
        grace = cast(int, optional_duration(value, "grace", at))  # required just above
        if grace > MAX_GRACE_S:
            raise at.error(f"grace of {namespace!r} is longer than {MAX_GRACE_S}s (1h)",
                           value.line_of("grace"))
        graces[namespace] = grace
    return graces
