"""Topic registry: every Kafka topic name, its shape and what flows on it. Imports stdlib only.

Names are spelled here and nowhere else. All topics are keyed by agent id, so every event about
one agent lands in one partition, in order. Partition counts match across the topics a worker
joins so faust co-partitions them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000

# The Kafka principals (SCRAM users, one per role) the ACLs below are written for.
ADMIN, WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API = (
    "admin", "worker", "agent", "service", "operator", "auditor", "api")
ROLES: tuple[str, ...] = (ADMIN, WORKER, AGENT, SERVICE, OPERATOR, AUDITOR, API)


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
    ),
    "Agents ask for elevated scopes, renew or release their grants. Broker-assigned append "
    "time is the request's clock.",
    _APPEND_TIME,
)
RISK = Topic(
    "permbroker.risk", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.risk.observed.v1",),
    "Risk signals about agents (and resources); revocation rules act on them.",
    _APPEND_TIME,
)
DECISIONS = Topic(
    "permbroker.decisions", PARTITIONS, "delete", 7 * DAY_MS,
    (
        "io.permbroker.escalation.decided.v1",
        "io.permbroker.grant.renewal.decided.v1",
        "io.permbroker.grant.release.decided.v1",
        "io.permbroker.command.answered.v1",
        "io.permbroker.escalation.pending.v1",
    ),
    "One decision per request, with reasons, matched rules and policy revision; and the answer "
    "to each registry or grant command.",
)
GRANT_EVENT_TYPES = (
    "io.permbroker.grant.issued.v1",
    "io.permbroker.grant.revoked.v1",
    "io.permbroker.grant.expired.v1",
    "io.permbroker.grant.released.v1",
    "io.permbroker.agent.revoked.v1",
    "io.permbroker.grant.renewed.v1",
    "io.permbroker.grant.expiring.v1",
)
GRANTS = Topic(
    "permbroker.grants", PARTITIONS, "delete", 30 * DAY_MS,
    GRANT_EVENT_TYPES,
    "Grant lifecycle: what resource services consume to enforce. Log of record for grants.",
)
GRANT_TOPIC_PREFIX = GRANTS.name + "."


def grant_topic(namespace: str) -> Topic:
    """The grant topic of one scope namespace (``payments`` -> ``permbroker.grants.payments``).

    It carries the grant events that concern the namespace, each grant projected to the
    namespace's scopes, plus every agent-level revocation; the default topic carries everything.
    """
    return Topic(
        GRANT_TOPIC_PREFIX + namespace, PARTITIONS, "delete", 30 * DAY_MS, GRANT_EVENT_TYPES,
        f"Grant lifecycle of the {namespace} namespace, for the resource services of {namespace}.",
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
)
AUDIT = Topic(
    "permbroker.audit", PARTITIONS, "delete", 365 * DAY_MS,
    ("io.permbroker.audit.recorded.v1",),
    "Every input, decision and lifecycle event, with what produced it: hash-chained per "
    "partition by the sealer (seq, prev_hash, hash) and sealed by signed digests.",
)
AUDIT_RAW = Topic(
    "permbroker.audit.raw", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.audit.recorded.v1",),
    "Audit records as workers write them, acknowledged before a grant becomes visible; the "
    "sealer chains each one into permbroker.audit (same partition).",
)
DEAD_LETTER = Topic(
    "permbroker.dlq", PARTITIONS, "delete", 30 * DAY_MS,
    (),
    "Messages that could not be decoded or validated: raw bytes, origin and reason in headers.",
)

APPROVALS = Topic(
    "permbroker.approvals", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.approval.voted.v1",),
    "Signed votes of approvers (operators, verifier agents) on pending requests, keyed by the "
    "requesting agent so they share the request's partition order. Append time is the vote's "
    "clock: a granted request's expiry counts from the deciding vote.",
    _APPEND_TIME,
)

# The identity issue's topics: the agent registry, grant commands and the broker's JWKS.
REGISTRY = Topic(
    "permbroker.registry", PARTITIONS, "delete", 30 * DAY_MS,
    ("io.permbroker.agent.command.v1",),
    "Signed registry commands: operators register, update, suspend, resume agents and revoke "
    "keys; an agent rotates its own key or registers itself with an enrollment token.",
    _APPEND_TIME,
)
AGENTS = Topic(
    "permbroker.agents", PARTITIONS, "compact", -1,
    ("io.permbroker.agent.record.v1",),
    "The agent registry, log of record: the latest record of every agent (profile, AI "
    "attributes, status, public keys), written by the workers only.",
)
GRANT_COMMANDS = Topic(
    "permbroker.grant-commands", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.grant.command.v1",),
    "Signed agent commands about their own grants: release early, get a grant token.",
    _APPEND_TIME,
)
JWKS = Topic(
    "permbroker.jwks", 1, "compact", -1,
    ("io.permbroker.jwks.published.v1",),
    "The broker's public grant-token keys (JWKS), the latest set per issuer (key = issuer).",
)
IDENTITY_TOPICS: tuple[Topic, ...] = (REGISTRY, AGENTS, GRANT_COMMANDS, JWKS)
USAGE = Topic(
    "permbroker.usage", PARTITIONS, "delete", 7 * DAY_MS,
    ("io.permbroker.grant.used.v1",),
    "Resource services report each use of a budgeted scope (counted atomically in Redis first); "
    "workers audit it and revoke a grant whose budget is exhausted.",
    _APPEND_TIME,
)

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
    raise KeyError(name)
