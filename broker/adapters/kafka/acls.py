"""Kafka ACLs derived from the topic registry, and applied idempotently. Imports confluent-kafka.

Also imports access, admin, broker.errors and schemas.topics. ``table`` is pure: every role a
topic names as writer or reader gets WRITE or READ on it (prefixed for the grant namespaces,
present and future, which workers may also CREATE); each role may use the consumer groups of
its prefix; the workers read and commit in their group and write their transactional ids (the
app id), resource services may only describe that group. Nothing else is allowed: the cluster
runs with ``allow.everyone.if.no.acl.found=false``. With tenants declared, the shared decision
and grant topics are read only by the broker's roles, each tenant's principals (the default
tenant's too) read their tenant's own, and a declared tenant's operator reads of the topics
about agents only its tenant's (``tenant_operator``). ``apply`` creates what is missing with
the admin's credentials, deletes what it is told to withdraw (what tenants take away), and
reports what it created, what was there already and what it removed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from enum import Enum
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # exported, not re-declared
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import admin_client
from broker.errors import BusError
from schemas import topics
from schemas.topics import Topic

TOPIC, GROUP, TRANSACTIONAL_ID = "TOPIC", "GROUP", "TRANSACTIONAL_ID"
LITERAL, PREFIXED = "LITERAL", "PREFIXED"


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW rule: ``User:<role>`` may do ``operation`` on a resource (from any host)."""

    role: str
    resource: str
    name: str
    pattern: str
    operation: str

    @property
    def principal(self) -> str:
        return f"User:{self.role}"

    def binding(self) -> AclBinding:
        """The confluent-kafka form."""
        return AclBinding(ResourceType[self.resource], self.name,
                          ResourcePatternType[self.pattern], self.principal, "*",
                          AclOperation[self.operation], AclPermissionType.ALLOW)

    def as_dict(self) -> dict[str, str]:
        return {"principal": self.principal, "resource": self.resource, "name": self.name,
                "pattern": self.pattern, "operation": self.operation}

    def __str__(self) -> str:
        pattern = "*" if self.pattern == PREFIXED else ""
        return f"{self.principal} {self.operation} {self.resource} {self.name}{pattern}"


def topic_acls(topic: Topic, pattern: str = LITERAL) -> list[Acl]:
    """WRITE for each writer, READ for each reader, DESCRIBE for each describer of ``topic``."""
    return ([Acl(r, TOPIC, topic.name, pattern, "WRITE") for r in topic.writers]
            + [Acl(r, TOPIC, topic.name, pattern, "READ") for r in topic.readers]
            + [Acl(r, TOPIC, topic.name, pattern, "DESCRIBE") for r in topic.describers])


def _namespaces() -> list[Acl]:
    """Every namespace grant topic, present or future: one prefixed rule per role."""
    any_namespace = topics.grant_topic("")  # named exactly the prefix
    return (topic_acls(any_namespace, PREFIXED)
            + [Acl(r, TOPIC, topics.GRANT_TOPIC_PREFIX, PREFIXED, "CREATE")
               for r in topics.GRANT_NAMESPACE_CREATORS])


def _groups(app_id: str) -> list[Acl]:
    own = [Acl(r, GROUP, topics.group_prefix(r), PREFIXED, "READ")
           for r in topics.ROLES if r != topics.ADMIN]
    return [*own,
            Acl(topics.WORKER, GROUP, app_id, PREFIXED, "READ"),  # faust's group, the sealer's
            Acl(topics.WORKER, TRANSACTIONAL_ID, app_id, PREFIXED, "WRITE"),  # the sealer's
            Acl(topics.SERVICE, GROUP, app_id, PREFIXED, "DESCRIBE")]  # revocation watch


def _tenant_wide() -> list[Acl]:
    """The workers create and write every tenant's topics, present or future (a worker may
    decide for a tenant before the stack has made that tenant's users)."""
    return [Acl(topics.WORKER, TOPIC, topics.TENANT_TOPIC_PREFIX, PREFIXED, op)
            for op in ("CREATE", "WRITE")]


def _own_topic(acl: Acl) -> bool:
    """Whether ``acl`` is on a topic a tenant has its own of (decisions, grants)."""
    return acl.resource == TOPIC and topics.owns(acl.name)


def tenant_table(tenant: str, app_id: str) -> list[Acl]:
    """The ACLs of ``tenant``'s principals (the default tenant's: the plain roles): each has
    its role's rules on the shared topics but the decision and grant topics, its own consumer
    groups, and what its tenant's topics name it for (its agents read its decisions, its
    services its grant topics, every namespace's: prefixed)."""
    shared = [a for a in _single(app_id) if a.role in topics.TENANT_ROLES and not _own_topic(a)]
    rules = [dataclasses.replace(
        a, role=topics.tenant_role(a.role, tenant),
        name=topics.group_prefix(topics.tenant_role(a.role, tenant))
        if a.name == topics.group_prefix(a.role) else a.name) for a in shared]
    return sorted({*rules, *topic_acls(topics.tenant_decisions(tenant)),
                   *topic_acls(topics.tenant_grants(tenant), PREFIXED)})


# What an operator sends: risk signals (revocations), registry and grant commands, approvals.
OPERATOR_COMMANDS = (topics.RISK, topics.REGISTRY, topics.GRANT_COMMANDS, topics.APPROVALS)


def tenant_operator(tenant: str) -> list[Acl]:
    """The ACLs of a declared tenant's operator (``operator@acme``): it reads its tenant's own
    topics (decisions, grants, its copy of the audit; present and future: prefixed), the agent
    registry and the broker's key sets, and writes the commands an operator sends (the worker
    refuses one about another tenant's agent). It reads nothing of the shared topics, which
    carry every tenant's records: not the log of record, the audit, the approvals or the
    acknowledgements."""
    who = topics.tenant_role(topics.OPERATOR, tenant)
    return sorted([Acl(who, TOPIC, topics.tenant_prefix(tenant), PREFIXED, "READ"),
                   *(Acl(who, TOPIC, t.name, LITERAL, "READ")
                     for t in (topics.AGENTS, topics.JWKS)),
                   *(Acl(who, TOPIC, t.name, LITERAL, "WRITE") for t in OPERATOR_COMMANDS),
                   Acl(who, GROUP, topics.group_prefix(who), PREFIXED, "READ")])


def _single(app_id: str, registry: Sequence[Topic] = topics.ALL_TOPICS) -> list[Acl]:
    """The ACLs of the roles when there are no tenants."""
    literal = [acl for t in registry if not t.name.startswith(topics.GRANT_TOPIC_PREFIX)
               for acl in topic_acls(t)]
    return sorted({*literal, *_namespaces(), *_groups(app_id), *_tenant_wide()})


def table(app_id: str, registry: Sequence[Topic] = topics.ALL_TOPICS,
          tenants: Iterable[str] = ()) -> list[Acl]:
    """Every ACL the roles (and ``tenants``' principals) need, derived from the registry
    (sorted, no duplicates).

    With tenants declared, the shared decision and grant topics carry every tenant's records:
    only the broker's own roles read them, and every tenant's principals, the default
    tenant's (the plain agent and service roles) among them, read their tenant's topics.
    """
    rules = _single(app_id, registry)
    declared = sorted(set(tenants) - {topics.DEFAULT_TENANT})
    if not declared:
        return rules
    broker = [a for a in rules if not (a.role in topics.TENANT_ROLES and _own_topic(a))]
    own = [acl for t in (topics.DEFAULT_TENANT, *declared) for acl in tenant_table(t, app_id)]
    operators = [acl for t in declared for acl in tenant_operator(t)]
    return sorted({*broker, *own, *operators})


def withdrawn(app_id: str, tenants: Iterable[str]) -> list[Acl]:
    """The rules of the other setup that ``tenants`` take away: with tenants declared, the
    default tenant's principals reading the shared decision and grant topics; without, their
    reading the default tenant's own topics (which its clients read whenever they may)."""
    single = set(_single(app_id))
    if set(tenants) - {topics.DEFAULT_TENANT}:
        return sorted(single - set(table(app_id, tenants=tenants)))
    return sorted(set(tenant_table(topics.DEFAULT_TENANT, app_id)) - single)


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the rules it created and those already in place."""

    created: tuple[Acl, ...]
    kept: tuple[Acl, ...]
    removed: tuple[Acl, ...] = ()

    def as_dict(self) -> dict[str, list[dict[str, str]]]:
        return {"created": [a.as_dict() for a in self.created],
                "kept": [a.as_dict() for a in self.kept],
                "removed": [a.as_dict() for a in self.removed]}


def _name(value: object) -> str:
    return value.name if isinstance(value, Enum) else str(value)


def from_binding(b: AclBinding) -> Acl | None:
    """The rule a binding the cluster lists stands for (None: not an ALLOW for a user)."""
    if b.permission_type != AclPermissionType.ALLOW or b.host != "*" \
            or not b.principal.startswith("User:"):
        return None
    return Acl(b.principal.removeprefix("User:"), _name(b.restype), b.name,
               _name(b.resource_pattern_type), _name(b.operation))


def _check_may_alter(admin: KafkaAccess, timeout: float) -> None:
    """BusError unless ``admin``'s user may change ACLs (ALTER on the cluster): anyone else is
    shown no ACLs at all, which would read as "every rule is missing"."""
    client = admin_client(admin)
    try:
        cluster = client.describe_cluster(include_authorized_operations=True,
                                          request_timeout=timeout).result(timeout=timeout)
    except (KafkaException, FutureTimeout) as exc:
        raise BusError(f"cannot describe the Kafka cluster as {admin.principal}: {exc}") from exc
    granted = {_name(op) for op in cluster.authorized_operations or []}
    if not granted & {"ALTER", "ALL"}:
        raise BusError(f"{admin.principal} may not list or change Kafka's ACLs (that needs ALTER "
                       "on the cluster: a super user)")


def existing(admin: KafkaAccess, timeout: float = 30.0) -> set[Acl]:
    """Every ALLOW rule the cluster holds now (BusError if Kafka does not say)."""
    # None matches any name, principal and host (the library's annotations say str).
    anything: str = None  # type: ignore[assignment]
    flt = AclBindingFilter(ResourceType.ANY, anything, ResourcePatternType.ANY, anything,
                           anything, AclOperation.ANY, AclPermissionType.ANY)
    client = admin_client(admin)
    try:
        bindings = client.describe_acls(flt, request_timeout=timeout).result(timeout=timeout)
    except (KafkaException, FutureTimeout) as exc:
        raise BusError(f"cannot list the cluster's ACLs as {admin.principal}: {exc}") from exc
    return {acl for b in bindings if (acl := from_binding(b)) is not None}


def apply(admin: KafkaAccess, wanted: Iterable[Acl], *, dry_run: bool = False,
          withdraw: Iterable[Acl] = (), timeout: float = 30.0) -> Applied:
    """Create the rules of ``wanted`` that are missing and delete those of ``withdraw`` that
    are present; idempotent (BusError on refusal)."""
    wanted = sorted(set(wanted))
    _check_may_alter(admin, timeout)
    have = existing(admin, timeout)
    missing = [acl for acl in wanted if acl not in have]
    stale = sorted(acl for acl in set(withdraw) - set(wanted) if acl in have)
    if not dry_run:
        client = admin_client(admin)  # kept referenced until every future is done
        if missing:
            created = client.create_acls([acl.binding() for acl in missing],
                                         request_timeout=timeout)
            _await_all(created, "Kafka refused the ACL", timeout)
        if stale:
            deleted = client.delete_acls([_exactly(acl) for acl in stale],
                                         request_timeout=timeout)
            _await_all(deleted, "Kafka did not delete the ACL", timeout)
    return Applied(tuple(missing), tuple(acl for acl in wanted if acl in have), tuple(stale))


def _exactly(acl: Acl) -> AclBindingFilter:
    """A filter matching ``acl``'s binding and nothing else."""
    b = acl.binding()
    return AclBindingFilter(b.restype, b.name, b.resource_pattern_type, b.principal, b.host,
                            b.operation, b.permission_type)


def _await_all(futures: Mapping[Any, Future[Any]], failure: str, timeout: float) -> None:
    for binding, future in futures.items():
        try:
            future.result(timeout=timeout)
        except (KafkaException, FutureTimeout) as exc:
            raise BusError(f"{failure} {binding}: {exc}") from exc
