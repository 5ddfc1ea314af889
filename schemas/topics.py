"""Topic registry: every Kafka topic name, its shape, what flows on it and who may touch it.

Imports stdlib only. Names are spelled here and nowhere else. All topics are keyed by agent id,
so every event about one agent lands in one partition, in order. Partition counts match across
the topics a worker joins so faust co-partitions them.

Each topic names the roles (Kafka principals, one SCRAM user per role) that may write it and
read it: the one declarative table the ACLs are derived from (broker/adapters/kafka/acls.py).
No role but ``admin`` (a super user) touches a topic its entry does not name it for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000

# The Kafka principals (SCRAM users, one per role) the ACLs below are written for. admin is the
# super user of the tooling (topics, users, ACLs); it needs no ACL and is named by no topic.
ADMIN, WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API = (
    "admin", "worker", "agent", "service", "operator", "auditor", "api")
ROLES: tuple[str, ...] = (ADMIN, WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API)


def group_prefix(role: str) -> str:
    """Consumer groups a role may use (its readers' throwaway groups, its own durable ones).

    The workers' group is the app id instead (a setting): workers read and commit in it,
    resource services may only describe it (its committed offsets prove revocations processed).
    """
    return f"pb-{role}-"


@dataclass(frozen=True)
class Topic:
    """One topic of the contract."""

    name: str
    partitions: int
    cleanup_policy: str
    retention_ms: int
    event_types: tuple[str, ...]
    description: str
    config: dict[str, str] = field(default_factory=dict)
    writers: tuple[str, ...] = ()  # roles with WRITE
    readers: tuple[str, ...] = ()  # roles with READ
    describers: tuple[str, ...] = ()  # roles that may see only its offsets (DESCRIBE)

    def kafka_config(self) -> dict[str, str]:
        """Topic-level configs for the AdminClient."""
        return {
            "cleanup.policy": self.cleanup_policy,
            "retention.ms": str(self.retention_ms),
            **self.config,
        }


PARTITIONS = 6
_APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}

ESCALATIONS = Topic(
    "permbroker.escalations", PARTITIONS, "delete", 7 * DAY_MS,
    (
        "io.permbroker.escalation.requested.v1",
        "io.permbroker.grant.renewal.requested.v1",
        "io.permbroker.grant.release.requested.v1",
        "io.permbroker.grant.delegation.requested.v1",
    ),
    "Agents ask for elevated scopes, renew, release or delegate their grants. Broker-assigned "
    "append time is the request's clock.",
    _APPEND_TIME,
    writers=(AGENT, API),
    readers=(WORKER, OPERATOR),
)
RISK = Topic(
    "permbroker.risk", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.risk.observed.v1",),
    "Risk signals about agents (and resources); revocation rules act on them.",
    _APPEND_TIME,
    writers=(AGENT, OPERATOR, API, WORKER),  # workers: the behaviour analytics' signals
    readers=(WORKER, OPERATOR),
    describers=(SERVICE,),  # a view's revocation watch compares its ends to the workers' commits
)
DECISIONS = Topic(
    "permbroker.decisions", PARTITIONS, "delete", 7 * DAY_MS,
    (
        "io.permbroker.escalation.decided.v1",
        "io.permbroker.grant.renewal.decided.v1",
        "io.permbroker.grant.release.decided.v1",
        "io.permbroker.command.answered.v1",
        "io.permbroker.escalation.pending.v1",
        "io.permbroker.agent.key.warning.v1",
        "io.permbroker.grant.delegation.decided.v1",
    ),
    "One decision per request, with reasons, matched rules and policy revision; and the answer "
    "to each registry or grant command.",
    writers=(WORKER,),
    readers=(AGENT, WORKER, OPERATOR, AUDITOR, API),  # workers: the behaviour analytics
)
GRANT_EVENT_TYPES = (
    "io.permbroker.grant.issued.v1",
    "io.permbroker.grant.revoked.v1",
    "io.permbroker.grant.expired.v1",
    "io.permbroker.grant.released.v1",
    "io.permbroker.agent.revoked.v1",
    "io.permbroker.grant.renewed.v1",
    "io.permbroker.grant.expiring.v1",
    "io.permbroker.agent.baseline.v1",
)
GRANTS = Topic(
    "permbroker.grants", PARTITIONS, "delete", 30 * DAY_MS,
    GRANT_EVENT_TYPES,
    "Grant lifecycle: what resource services consume to enforce. Log of record for grants.",
    writers=(WORKER,),
    readers=(SERVICE, WORKER, OPERATOR, API),  # workers: rebuilding the Redis view
)
GRANT_TOPIC_PREFIX = GRANTS.name + "."
# Workers announce on each namespace topic which namespaces they route (no agent key).
ROUTING_EVENT_TYPE = "io.permbroker.grant.routing.v1"
AUDIT_WITHHELD_TYPE = "io.permbroker.audit.withheld.v1"
# Every namespace's grant topic, present or future (one prefixed ACL each): the workers create
# the topic of a namespace they route to when it is missing.
GRANT_NAMESPACE_WRITERS: tuple[str, ...] = (WORKER,)
GRANT_NAMESPACE_READERS: tuple[str, ...] = (SERVICE, OPERATOR)
GRANT_NAMESPACE_CREATORS: tuple[str, ...] = (WORKER,)


def grant_topic(namespace: str) -> Topic:
    """The grant topic of one scope namespace (``payments`` -> ``permbroker.grants.payments``).

    It carries the grant events that concern the namespace, each grant projected to the
    namespace's scopes, plus every agent-level revocation; the default topic carries everything.
    """
    return Topic(
        GRANT_TOPIC_PREFIX + namespace, PARTITIONS, "delete", 30 * DAY_MS,
        (*GRANT_EVENT_TYPES, ROUTING_EVENT_TYPE),
        f"Grant lifecycle of the {namespace} namespace, for the resource services of "
        f"{namespace}, and the workers' routing announcements (is this namespace routed?).",
        writers=GRANT_NAMESPACE_WRITERS, readers=GRANT_NAMESPACE_READERS,
    )


# The namespaces of the example policy; any other namespace gets its topic the same way.
GRANTS_PAYMENTS = grant_topic("payments")
GRANTS_CRM = grant_topic("crm")
GRANTS_REPORTS = grant_topic("reports")
ROUTED_GRANT_TOPICS = (GRANTS_PAYMENTS, GRANTS_CRM, GRANTS_REPORTS)
REVOCATION_ACKS = Topic(
    "permbroker.revocation-acks", PARTITIONS, "delete", 30 * DAY_MS,
    ("io.permbroker.revocation.acknowledged.v1", "io.permbroker.enforcement.status.v1"),
    "Enforcement points confirm each revocation they applied, and report how current they are.",
    writers=(SERVICE, API),  # the API's own grant view is an enforcement point
    readers=(OPERATOR, API),
)
AUDIT = Topic(
    "permbroker.audit", PARTITIONS, "delete", 365 * DAY_MS,
    ("io.permbroker.audit.recorded.v1",),
    "Every input, decision and lifecycle event, with what produced it: hash-chained per "
    "partition by the sealer (seq, prev_hash, hash) and sealed by signed digests.",
    writers=(WORKER,),  # the sealer, inside the worker (or `permbroker audit seal`)
    readers=(WORKER, AUDITOR, OPERATOR, API),  # the sealer reads its chain head back
)
AUDIT_RAW = Topic(
    "permbroker.audit.raw", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.audit.recorded.v1",),
    "Audit records as workers write them, acknowledged before a grant becomes visible; the "
    "sealer chains each one into permbroker.audit (same partition).",
    writers=(WORKER, OPERATOR, API),  # operators: selector revocations, `grants rebuild`
    readers=(WORKER, OPERATOR, AUDITOR),  # operators: `grants rebuild` restores live risk
)
DEAD_LETTER = Topic(
    "permbroker.dlq", PARTITIONS, "delete", 30 * DAY_MS,
    (),
    "Messages that could not be decoded or validated: raw bytes, origin and reason in headers.",
    writers=(WORKER,),
    readers=(OPERATOR,),
)

APPROVALS = Topic(
    "permbroker.approvals", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.approval.voted.v1",),
    "Signed votes of approvers (operators, verifier agents) on pending requests, keyed by the "
    "requesting agent so they share the request's partition order. Append time is the vote's "
    "clock: a granted request's expiry counts from the deciding vote.",
    _APPEND_TIME,
    writers=(AGENT, OPERATOR, API),  # approvers may be verifier agents
    readers=(WORKER, OPERATOR),
)

# The identity issue's topics: the agent registry, grant commands and the broker's JWKS.
REGISTRY = Topic(
    "permbroker.registry", PARTITIONS, "delete", 30 * DAY_MS,
    ("io.permbroker.agent.command.v1",),
    "Signed registry commands: operators register, update, suspend, resume agents and revoke "
    "keys; an agent rotates its own key or registers itself with an enrollment token.",
    _APPEND_TIME,
    writers=(AGENT, OPERATOR, API),
    readers=(WORKER, OPERATOR),
)
AGENTS = Topic(
    "permbroker.agents", PARTITIONS, "compact", -1,
    ("io.permbroker.agent.record.v1",),
    "The agent registry, log of record: the latest record of every agent (profile, AI "
    "attributes, status, public keys), written by the workers only.",
    writers=(WORKER,),
    readers=(WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API),
)
GRANT_COMMANDS = Topic(
    "permbroker.grant-commands", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.grant.command.v1",),
    "Signed commands about one grant: an agent asks for a token for its own grant, an "
    "operator revokes a grant.",
    _APPEND_TIME,
    writers=(AGENT, OPERATOR, API),  # the API: the console's revocations, as the operator's
    readers=(WORKER, OPERATOR),
)
JWKS = Topic(
    "permbroker.jwks", 1, "delete", -1,
    ("io.permbroker.jwks.published.v1",),
    "The broker's public keys (JWKS) as published, every set kept (key = issuer): each set is "
    "signed by a key of the one before, the chain readers follow from their trust anchor.",
    writers=(WORKER,),
    readers=(WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API),
)
IDENTITY_TOPICS: tuple[Topic, ...] = (REGISTRY, AGENTS, GRANT_COMMANDS, JWKS)
USAGE = Topic(
    "permbroker.usage", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.grant.used.v1", "io.permbroker.checks.reported.v1"),
    "Resource services report each use of a budgeted scope (counted atomically in Redis first); "
    "workers audit it and revoke a grant whose budget is exhausted. Enforcement points also "
    "report the checks they answer, in batches per agent; workers audit each check.",
    _APPEND_TIME,
    writers=(SERVICE,),
    readers=(WORKER, OPERATOR),
)

# --- Tenants: once tenants are declared on the broker, every tenant (the default one too) has
# its own decision and grant topics, read by its own agent and service principals (the default
# tenant's are the plain roles: agent, service). The workers write an agent's decisions and
# grant events to the shared topics (the log of record, which then only the broker's own roles
# read) and to its tenant's topics; its namespace projections go to its tenant's namespace
# topics only. Without declared tenants there is one audience, and it reads the shared topics.
DEFAULT_TENANT = "default"
TENANT_TOPIC_PREFIX = "permbroker.tenant."
# The roles whose tenant principals (``agent@acme``, ``service@acme``) read their tenant's own
# topics as the plain roles read the shared ones.
TENANT_ROLES: tuple[str, ...] = (AGENT, SERVICE)
# Every principal a tenant has: those, and its operator (``operator@acme``), who reads only its
# tenant's own topics and store keys (broker/adapters/kafka/acls.py ``tenant_operator``).
TENANT_PRINCIPALS: tuple[str, ...] = (*TENANT_ROLES, OPERATOR)
TENANT_SEPARATOR = "@"


def tenant_role(role: str, tenant: str) -> str:
    """The Kafka principal of ``role`` in ``tenant`` (the default tenant's is the role)."""
    if tenant == DEFAULT_TENANT:
        return role
    if role not in TENANT_PRINCIPALS:
        raise ValueError(f"tenants have no principal of role {role!r}, only of "
                         f"{', '.join(TENANT_PRINCIPALS)}")
    return f"{role}{TENANT_SEPARATOR}{tenant}"


def role_of(principal: str) -> tuple[str, str]:
    """(role, tenant) of a Kafka principal: ``agent@acme`` -> (agent, acme)."""
    role, sep, tenant = principal.partition(TENANT_SEPARATOR)
    return (role, tenant) if sep else (role, DEFAULT_TENANT)


def tenant_prefix(tenant: str) -> str:
    """Every topic of ``tenant`` starts with this (tenant ids hold no dot: no other tenant's)."""
    return f"{TENANT_TOPIC_PREFIX}{tenant}."


def tenant_decisions(tenant: str) -> Topic:
    """The decision topic of ``tenant``: its agents' decisions and answers, read by its agents."""
    return Topic(
        tenant_prefix(tenant) + "decisions", PARTITIONS, "delete", 7 * DAY_MS,
        DECISIONS.event_types,
        f"The decisions and answers about agents of tenant {tenant}, for its agents.",
        writers=(WORKER,), readers=(tenant_role(AGENT, tenant), OPERATOR),
    )


def tenant_grants(tenant: str, namespace: str | None = None) -> Topic:
    """The grant topic of ``tenant`` (of one of its namespaces), read by its services."""
    base = tenant_prefix(tenant) + "grants"
    if namespace is None:
        return Topic(base, PARTITIONS, "delete", 30 * DAY_MS,
                     (*GRANT_EVENT_TYPES, ROUTING_EVENT_TYPE),
                     f"Grant lifecycle of tenant {tenant}'s agents, for its resource services, "
                     "and the workers' routing announcements (are the tenant's topics written?).",
                     writers=(WORKER,), readers=(tenant_role(SERVICE, tenant), OPERATOR))
    shared = grant_topic(namespace)
    return Topic(f"{base}.{namespace}", PARTITIONS, "delete", 30 * DAY_MS, shared.event_types,
                 f"Grant lifecycle of tenant {tenant}'s agents in the {namespace} namespace, "
                 "and the workers' routing announcements.",
                 writers=(WORKER,), readers=(tenant_role(SERVICE, tenant), OPERATOR))


def for_tenant(name: str, tenant: str) -> str:
    """The name of topic ``name`` (the decisions or a grant topic) among ``tenant``'s own
    topics (the default tenant has them too, once tenants are declared); any other name is
    ``name`` (a shared topic)."""
    if name == DECISIONS.name:
        return tenant_decisions(tenant).name
    if name == GRANTS.name:
        return tenant_grants(tenant).name
    if name.startswith(GRANT_TOPIC_PREFIX):
        return tenant_grants(tenant, name.removeprefix(GRANT_TOPIC_PREFIX)).name
    return name


def carries_tenant(name: str, tenant: str) -> bool:
    """Whether topic ``name`` carries records about ``tenant``'s agents: a tenant's own topic
    only its tenant's, every other topic (the shared log of record) every tenant's."""
    return not name.startswith(TENANT_TOPIC_PREFIX) or name.startswith(tenant_prefix(tenant))


def tenant_of_topic(name: str) -> str | None:
    """The tenant of one of a tenant's own topics (``permbroker.tenant.<tenant>.…``); None for
    a shared topic."""
    if not name.startswith(TENANT_TOPIC_PREFIX):
        return None
    return name.removeprefix(TENANT_TOPIC_PREFIX).partition(".")[0] or None


def namespace_of_topic(name: str) -> str | None:
    """The namespace of a namespace grant topic, shared (``permbroker.grants.<ns>``) or a
    tenant's (``permbroker.tenant.<tenant>.grants.<ns>``); None for any other topic."""
    prefix = GRANT_TOPIC_PREFIX
    tenant = tenant_of_topic(name)
    if tenant is not None:
        prefix = tenant_grants(tenant).name + "."
    namespace = name.removeprefix(prefix)
    return namespace if name.startswith(prefix) and namespace else None


def carries_routing(name: str) -> bool:
    """Whether the workers' routing announcements go to topic ``name`` (every namespace grant
    topic, every tenant's grant topic)."""
    try:
        return ROUTING_EVENT_TYPE in by_name(name).event_types
    except KeyError:
        return False


def tenant_audit(tenant: str) -> Topic:
    """A declared tenant's copy of the sealed audit, read by its operators: per partition, the
    audit's chain with every entry about another tenant's agent (or about no agent) withheld
    (its link only) and every digest in full, so it verifies as the same chain."""
    return Topic(
        tenant_prefix(tenant) + "audit", AUDIT.partitions, AUDIT.cleanup_policy,
        AUDIT.retention_ms,
        (*AUDIT.event_types, AUDIT_WITHHELD_TYPE),
        f"Tenant {tenant}'s copy of the sealed audit: its agents' entries and every digest in "
        "full, the others as their chain links.",
        writers=(WORKER,), readers=(tenant_role(OPERATOR, tenant),))


def walled_tenant(principal: str) -> str | None:
    """The tenant whose operator user ``principal`` is (``operator@acme`` -> acme): what it may
    read is walled to that tenant. None for every other principal."""
    role, tenant = role_of(principal)
    return tenant if role == OPERATOR and tenant != DEFAULT_TENANT else None


def audit_for(principal: str) -> Topic:
    """The sealed audit ``principal`` reads: a declared tenant's operator its tenant's copy,
    everyone else the audit itself."""
    tenant = walled_tenant(principal)
    return AUDIT if tenant is None else tenant_audit(tenant)


def owns(name: str) -> bool:
    """Whether a tenant has its own topic instead of shared topic ``name`` (decisions, grants)."""
    return name in (DECISIONS.name, GRANTS.name) or name.startswith(GRANT_TOPIC_PREFIX)


def tenant_topics(tenant: str) -> tuple[Topic, ...]:
    """The topics a tenant has from the start (its namespace topics come with its grants; a
    declared tenant's audit copy, the default tenant has the audit itself)."""
    own = (tenant_decisions(tenant), tenant_grants(tenant))
    return own if tenant == DEFAULT_TENANT else (*own, tenant_audit(tenant))


ALL_TOPICS: tuple[Topic, ...] = (
    ESCALATIONS, RISK, DECISIONS, GRANTS, AUDIT, AUDIT_RAW, DEAD_LETTER, *ROUTED_GRANT_TOPICS,
    REVOCATION_ACKS, *IDENTITY_TOPICS, USAGE, APPROVALS,
)

# Dead-letter headers (the value is the original raw bytes).
DLQ_REASON = "dlq_reason"
DLQ_TOPIC = "dlq_topic"
DLQ_PARTITION = "dlq_partition"
DLQ_OFFSET = "dlq_offset"


def by_name(name: str) -> Topic:
    """Look up a topic of the contract by name."""
    for topic in ALL_TOPICS:
        if topic.name == name:
            return topic
    if name.startswith(GRANT_TOPIC_PREFIX):
        return grant_topic(name.removeprefix(GRANT_TOPIC_PREFIX))
    if name.startswith(TENANT_TOPIC_PREFIX):
        tenant, _, rest = name.removeprefix(TENANT_TOPIC_PREFIX).partition(".")
        if rest == "decisions":
            return tenant_decisions(tenant)
        if rest == "audit":
            return tenant_audit(tenant)
        if rest == "grants" or rest.startswith("grants."):
            return tenant_grants(tenant, rest.removeprefix("grants.") if "." in rest else None)
    raise KeyError(name)
