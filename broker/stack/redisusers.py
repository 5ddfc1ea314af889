"""Redis users of a local stack: each role's Kafka user, with the same password, in Redis too.

Imports stdlib, redis, the stack's credentials, the Redis URL helpers and the topic registry's
roles. The stack's Redis (single node or cluster) refuses a client that does not log in: the
``default`` user is off. What each role may do:

- ``admin``: everything (operators' maintenance, the test harness);
- ``worker``, ``api``, ``operator``: the grant store's keys (``pb:*``) with every command but
  the dangerous ones (no FLUSHALL, KEYS, CONFIG SET, DEBUG, MONITOR, ACL ...), plus INFO and
  CONFIG GET (the startup check of ``maxmemory-policy``, the metrics);
- ``service``: count budget uses only: read a grant (``pb:{<agent>}:grant:*``), read and write
  its budget (``pb:{<agent>}:budget:*``), never list key names (no SCAN, RANDOMKEY or KEYS);
  a tenant's ``service@<tenant>`` the same for its own tenant's agents only
  (``pb:{<tenant>:*}:…``);
- a tenant's ``operator@<tenant>``: read its own tenant's agents' keys only
  (``pb:{<tenant>:*}:*``), write none, never list key names (its CLI finds the tenant's agents
  in the registry);
- agents and auditors: no Redis user (they never read the store).

Passwords are stored as SHA-256 hashes in the ACL file (``#<hex>``), 0600. A process of a role
is given ``as_user(url, role, password)``: the URL carries its login (``redis://worker:…@…``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import redis

from broker.adapters.redis.calls import as_user
from broker.stack.credentials import Credentials
from schemas.topics import ADMIN, API, DEFAULT_TENANT, OPERATOR, SERVICE, WORKER, role_of

_STORE = "~pb:* +@all -@dangerous +info +config|get"
# A service names the keys it reads; it may not list key names (SCAN would show it every
# agent's and grant's id, of every tenant).
_METER = "+@all -@dangerous -scan -randomkey"
RULES = {
    ADMIN: "~* &* +@all",
    WORKER: _STORE,
    API: _STORE,
    OPERATOR: _STORE,
    SERVICE: f"%R~pb:{{*}}:grant:* ~pb:{{*}}:budget:* {_METER}",
}


def rules_of(user: str) -> str | None:
    """The ACL rules of one user (None: no Redis user). A tenant's service and operator reach
    only their own agents' keys: their ids are ``<tenant>:<name>``, their keys
    ``pb:{<tenant>:<name>}:…``."""
    role, tenant = role_of(user)
    own = f"pb:{{{tenant}:*}}"
    if role == SERVICE and tenant != DEFAULT_TENANT:
        return f"%R~{own}:grant:* ~{own}:budget:* {_METER}"
    if role == OPERATOR and tenant != DEFAULT_TENANT:
        return f"%R~{own}:* {_METER}"
    return RULES.get(role)


def users(credentials: Credentials) -> dict[str, list[str]]:
    """Every Redis user of ``credentials`` with its ACL rules (password hashed)."""
    out = {}
    for user, password in sorted(credentials.passwords.items()):
        rules = rules_of(user)
        if rules is not None:
            digest = hashlib.sha256(password.encode()).hexdigest()
            out[user] = ["on", f"#{digest}", *rules.split()]
    return out


def acl_text(credentials: Credentials) -> str:
    """The ACL file: the default user off, then every role's user."""
    lines = ["user default off nopass nocommands"]
    lines += [f"user {user} {' '.join(rules)}" for user, rules in users(credentials).items()]
    return "\n".join(lines) + "\n"


def write_acl_file(path: Path, credentials: Credentials) -> Path:
    """Write the ACL file (0600 from the start) for ``redis-server --aclfile``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(acl_text(credentials))
    tmp.replace(path)
    return path


def apply(client: redis.Redis, credentials: Credentials) -> list[str]:
    """Create the users of ``credentials`` a running node lacks (as a user that may: admin, or
    the default user of a Redis that has no users yet), then turn the default user off. Users
    already there are left alone (their passwords never change; their clients stay logged
    in). Idempotent; returns the users created."""
    run: Any = client  # redis-py's execute_command is untyped
    there = {u.decode() if isinstance(u, bytes) else str(u)
             for u in run.execute_command("ACL", "USERS")}
    created = []
    for user, rules in users(credentials).items():
        if user not in there:
            run.execute_command("ACL", "SETUSER", user, "reset", *rules)
            created.append(user)
    run.execute_command("ACL", "SETUSER", "default", "off")
    return created


def apply_at(url: str, credentials: Credentials) -> list[str]:
    """``apply`` on the Redis at ``url`` (logging in as the URL says)."""
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        return apply(client, credentials)
    finally:
        client.close()


def url_of(url: str, credentials: Credentials, role: str) -> str:
    """``url`` logging in as ``role``'s user."""
    return as_user(url, role, credentials.password(role))
