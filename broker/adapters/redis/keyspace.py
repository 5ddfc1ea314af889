"""Redis key names of the grant store, spelled once. Imports stdlib, redis's slot hash, schemas.

Every per-agent key carries the hash tag ``{agent_id}`` so one agent's keys share a Redis Cluster
slot and the Lua scripts that touch them stay atomic. Every per-agent key is written with an
absolute expiry (PXAT): nothing here lives forever.

The layout is the same on one node and on a cluster. A script never touches a key of another
slot: the "view built" marker is written once per cluster slot (``view_marker`` names the one in
an agent's slot), and the expiry indexes are sharded by a hash tag (``expiry_index``) that the
sweeper iterates (``expiry_indexes``).
"""

from __future__ import annotations

from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from schemas.topics import DEFAULT_TENANT

PREFIX = "pb"

# Set when the view was (re)built from Kafka (when, for listings); the per-slot markers below
# are what scripts and checks read. Absent = fail closed.
VIEW_EPOCH = f"{PREFIX}:view:epoch"
# The fingerprint of the baseline statements a starting worker last stated for every agent.
BASELINES_STATED = f"{PREFIX}:baselines:stated"
AGENT_KEY_PATTERN = f"{PREFIX}:{{*}}:*"
MEMBER_SEP = "\x1f"
# Shards of the expiry index (zsets "agent\x1fgrant\x1fnamespaces" -> ms; PXAT of the latest).
EXPIRY_SHARDS = 16
_TAG_CHARS = [chr(0x40 | n) for n in range(16)]  # "@A..O": no brace, no separator


@cache
def _slot_tags() -> tuple[str, ...]:
    """One short hash tag per cluster slot (index = slot), found once per process (~30 ms)."""
    tags: list[str | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for a in _TAG_CHARS:
        for b in _TAG_CHARS:
            for c in _TAG_CHARS:
                for d in _TAG_CHARS:
                    tag = a + b + c + d
                    slot = key_slot(tag.encode())
                    if tags[slot] is None:
                        tags[slot] = tag
    found = tuple(t for t in tags if t is not None)
    assert len(found) == REDIS_CLUSTER_HASH_SLOTS, "every slot has a tag"
    return found


def agent_slot(agent_id: str) -> int:
    """The cluster slot of every key of one agent."""
    return key_slot(agent_prefix(agent_id).encode())


def view_marker(agent_id: str) -> str:
    """The "view built" marker in the agent's slot: a script on the agent's keys reads it."""
    return f"{PREFIX}:view:{{{_slot_tags()[agent_slot(agent_id)]}}}"


def view_markers() -> list[str]:
    """Every slot's "view built" marker (written when the view is built, one per slot)."""
    return [f"{PREFIX}:view:{{{tag}}}" for tag in _slot_tags()]


def _shard(agent_id: str) -> int:
    return agent_slot(agent_id) % EXPIRY_SHARDS


def expiry_index(agent_id: str) -> str:
    """The expiry index shard of the agent's grants (scored by warning time, then expiry ms)."""
    return f"{PREFIX}:expiry:{{x{_shard(agent_id)}}}"


def legacy_warning_index(agent_id: str) -> str:
    """The warning shard an earlier version kept beside the expiry index (read until empty)."""
    return f"{PREFIX}:expiring:{{x{_shard(agent_id)}}}"


def expiry_indexes() -> list[str]:
    """Every shard of the expiry index (the sweeper reads each)."""
    return [f"{PREFIX}:expiry:{{x{n}}}" for n in range(EXPIRY_SHARDS)]


def legacy_warning_indexes() -> list[str]:
    """Every warning shard an earlier version kept beside the expiry index."""
    return [f"{PREFIX}:expiring:{{x{n}}}" for n in range(EXPIRY_SHARDS)]


def expiry_member(agent_id: str, grant_id: str, scopes: tuple[str, ...] = ()) -> str:
    """Member of the expiry indexes: agent, grant and the namespaces its end is routed to."""
    namespaces = ",".join(sorted({s.split(":", 1)[0] for s in scopes}))
    return f"{agent_id}{MEMBER_SEP}{grant_id}{MEMBER_SEP}{namespaces}"


def parse_member(member: str) -> tuple[str, str, tuple[str, ...] | None]:
    """(agent, grant, namespaces); namespaces None for members written before routing."""
    parts = member.split(MEMBER_SEP)
    namespaces = tuple(n for n in parts[2].split(",") if n) if len(parts) > 2 else None
    return parts[0], parts[1], namespaces


def agent_prefix(agent_id: str) -> str:
    """The prefix shared by every key of one agent (hash-tagged)."""
    return f"{PREFIX}:{{{agent_id}}}:"


def grant(agent_id: str, grant_id: str) -> str:
    """The grant itself (GrantIssued JSON), PXAT its expires_at."""
    return f"{agent_prefix(agent_id)}grant:{grant_id}"


def life(agent_id: str, grant_id: str) -> str:
    """Present while a grant has not been revoked or released; its expiry is then announced."""
    return f"{agent_prefix(agent_id)}life:{grant_id}"


def index(agent_id: str) -> str:
    """Zset of the agent's grant ids scored by expires_at ms."""
    return f"{agent_prefix(agent_id)}grants"


def decision(agent_id: str, request_id: str) -> str:
    """The decision recorded for one request (idempotency under redelivery)."""
    return f"{agent_prefix(agent_id)}decision:{request_id}"


def published(agent_id: str, request_id: str) -> str:
    """A "published" marker: of a decision record written before records.py's compact form
    (a compact record carries its flag in its first byte), and of a budget exhaustion's
    revocation (broker/adapters/redis/budgets.py)."""
    return f"{agent_prefix(agent_id)}published:{request_id}"


def revoked(agent_id: str) -> str:
    """Epoch ms of the agent's latest revoke-all; earlier requests are denied."""
    return f"{agent_prefix(agent_id)}revoked"


def quarantine(agent_id: str) -> str:
    """Present while the agent is quarantined; value = the rule that quarantined it."""
    return f"{agent_prefix(agent_id)}quarantine"


def revocation(agent_id: str, cause_id: str) -> str:
    """The grants one revoking signal removed (so a redelivery republishes the same events)."""
    return f"{agent_prefix(agent_id)}revocation:{cause_id}"


def risk(agent_id: str) -> str:
    """The agent's live risk: highest recent severity that did not revoke."""
    return f"{agent_prefix(agent_id)}risk"


def renewal(agent_id: str, request_id: str) -> str:
    """The decision recorded for one renewal request (idempotency under redelivery)."""
    return f"{agent_prefix(agent_id)}renewal:{request_id}"


def release(agent_id: str, request_id: str) -> str:
    """The decision recorded for one release request (idempotency under redelivery)."""
    return f"{agent_prefix(agent_id)}release:{request_id}"


def grant_revocation(agent_id: str, command_id: str) -> str:
    """The grant.revoked recorded for one operator's revocation of one grant (redelivery)."""
    return f"{agent_prefix(agent_id)}grant-revocation:{command_id}"


def replica_ack(agent_id: str) -> str:
    """Written after a replicated write (cluster only) so WAIT covers it; lives a minute."""
    return f"{agent_prefix(agent_id)}replica-ack"


def owner(agent_id: str, role: str) -> str:
    """Fence epoch of the latest worker that wrote for the agent from one topic ('esc'/'risk')."""
    return f"{agent_prefix(agent_id)}owner:{role}"


def rate(agent_id: str) -> str:
    """The agent's token bucket (hash: tokens, ts ms), PXAT when it would be full again."""
    return f"{agent_prefix(agent_id)}rate"


def tenant_rate(tenant: str) -> str:
    """The tenant's escalations quota bucket (hash: tokens, ts ms), PXAT when full again."""
    return f"{PREFIX}:tenant:{{{tenant}}}:rate"


def tenant_grants(tenant: str) -> str:
    """The tenant's grants counted by its active-grants quota (zset grant_id -> expires_at
    ms), PXAT its latest expiry. Hash-tagged by tenant: one slot, apart from agent keys."""
    return f"{PREFIX}:tenant:{{{tenant}}}:grants"


def fence(topic: str, partition: int) -> str:
    """Ownership epoch of one input partition, bumped by every worker that is assigned it."""
    return f"{PREFIX}:fence:{topic}:{partition}"

# Identity (the agent registry issue): signature nonces and when each agent last acted.
LAST_ACTED = f"{PREFIX}:agents:last-acted"  # hash agent -> epoch ms; PXAT refreshed on write


def nonce(principal: str, jti: str) -> str:
    """The first Kafka origin of one event signature (its nonce); lives past the iat window."""
    return f"{PREFIX}:{{{principal}}}:nonce:{jti}"


def spent(principal: str, jti: str) -> str:
    """An API assertion the HTTP API acted on (used once); lives until it expires."""
    return f"{PREFIX}:{{{principal}}}:spent:{jti}"


# Usage budgets: counters of one grant, and what an exhaustion revoked.
def budget(agent_id: str, grant_id: str) -> str:
    """Hash of one grant's budgets: ``left:<scope>`` uses left, ``use:<use id>`` what each use
    left (idempotency); PXAT the grant's own expiry, so it ends with the grant."""
    return f"{agent_prefix(agent_id)}budget:{grant_id}"


def budget_revoked(agent_id: str, cause_id: str) -> str:
    """The grant (JSON, '' if it had already ended) one budget exhaustion revoked."""
    return f"{agent_prefix(agent_id)}budget-revoked:{cause_id}"
# Approvals. Global zset of held requests "agent\x1frequest_id" scored by the end of
# their approval window (PXAT: past the latest window it holds, plus a margin).
APPROVALS_DUE = f"{PREFIX}:approvals:due"


def approval(agent_id: str, request_id: str) -> str:
    """A held request: its pending record, status and one ``vote:<approver>`` field per vote."""
    return f"{agent_prefix(agent_id)}approval:{request_id}"

# Behaviour profiles (streams.analytics): hash-tagged per agent, and one hash per agent class.
def behaviour(agent_id: str) -> str:
    """Hash: the agent's behaviour profile (JSON) and the decision offset it last folded in;
    PXAT its last request + the detectors' retention."""
    return f"{agent_prefix(agent_id)}behaviour"


def usage_known(agent_id: str) -> str:
    """Set: the resources the agent's reported checks touched (its usual set); PXAT remember."""
    return f"{agent_prefix(agent_id)}usage:known"


def usage_window(agent_id: str) -> str:
    """Zset: the agent's recent checks ("report\x1fn\x1f0|1": 1 = a new resource) by check
    time; PXAT the latest check + the detector's window."""
    return f"{agent_prefix(agent_id)}usage:window"


def usage_report(agent_id: str, report_id: str) -> str:
    """String: a check report already observed by the detector (a redelivery is skipped)."""
    return f"{agent_prefix(agent_id)}usage:report:{report_id}"


def usage_cooldown(agent_id: str) -> str:
    """String: the unusual-resources detector fired for the agent; PXAT the cooldown's end."""
    return f"{agent_prefix(agent_id)}usage:cooldown"


def _of_tenant(tenant: str) -> str:
    """The behaviour key infix of a tenant: none for the default tenant (its keys keep their
    names), ``tenant:<t>:`` for any other, so no tenant's agents count for another's class."""
    return "" if tenant == DEFAULT_TENANT else f"tenant:{tenant}:"


def behaviour_class(agent_class: str, tenant: str = DEFAULT_TENANT) -> str:
    """Hash: patterns any agent of the tenant's class used (-> last ms) and its request count;
    PXAT."""
    return f"{PREFIX}:behaviour:{_of_tenant(tenant)}class:{agent_class}"


def behaviour_group(agent_class: str, model_version: str, bucket_ms: int,
                    tenant: str = DEFAULT_TENANT) -> str:
    """Hash {r, g, d}: requests, grants, denials of one agent class and model version of a
    tenant in the time bucket starting at ``bucket_ms``; PXAT the end of the longest detector
    window."""
    return f"{PREFIX}:behaviour:{_of_tenant(tenant)}group:{agent_class}:{model_version}:{bucket_ms}"


# Delegation: the decision of one delegation request (in the delegator's slot), the children of
# one grant (in the parent's slot) and what a parent's end did to one child (in the child's).
def delegation(agent_id: str, request_id: str) -> str:
    """The decision recorded for one delegation request (idempotency under redelivery)."""
    return f"{agent_prefix(agent_id)}delegation:{request_id}"


def children(agent_id: str, grant_id: str) -> str:
    """Set of "child agent\\x1fchild grant" delegated from one grant; PXAT past its expiry."""
    return f"{agent_prefix(agent_id)}children:{grant_id}"


def ended_child(agent_id: str, grant_id: str) -> str:
    """The child grant (JSON, '' if already gone) its parent's end removed; never re-created."""
    return f"{agent_prefix(agent_id)}ended-child:{grant_id}"
