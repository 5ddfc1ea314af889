"""Topic registry: every Kafka topic name, its shape and what flows on it. Imports stdlib only.

Names are spelled here and nowhere else. All topics are keyed by agent id, so every event about
one agent lands in one partition, in order. Partition counts match across the topics a worker
joins so faust co-partitions them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DAY_MS = 24 * 3600 * 1000


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
    ("io.permbroker.escalation.requested.v1",),
    "Agents ask for elevated scopes. Broker-assigned append time is the request's clock.",
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
    ("io.permbroker.escalation.decided.v1",),
    "One decision per request, with reasons, matched rules and policy revision.",
)
GRANTS = Topic(
    "permbroker.grants", PARTITIONS, "delete", 30 * DAY_MS,
    (
        "io.permbroker.grant.issued.v1",
        "io.permbroker.grant.revoked.v1",
        "io.permbroker.grant.expired.v1",
        "io.permbroker.grant.released.v1",
        "io.permbroker.agent.revoked.v1",
    ),
    "Grant lifecycle: what resource services consume to enforce. Log of record for grants.",
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

ALL_TOPICS: tuple[Topic, ...] = (
    ESCALATIONS, RISK, DECISIONS, GRANTS, AUDIT, AUDIT_RAW, DEAD_LETTER,
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
    raise KeyError(name)
