"""Delegation across a wiped Redis: the rebuild restores each parent's children set, so the
parent's end after the rebuild still ends its child (key removed, ``grant.revoked`` published)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics
from schemas.events import GrantRevoked
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]


def _operator(settings: Settings, *args: str) -> dict[str, object]:
    """``permbroker ARGS --json`` as an operator, in its own process; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", *args, "--json"],
        env=worker_env(settings, role_access(settings, topics.OPERATOR)),
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_a_parent_revoked_after_flush_and_rebuild_still_ends_its_child(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
    rclient: redis.Redis,
) -> None:
    """Delegate; stop the worker, FLUSHALL, ``grants rebuild``; the children set is back; revoking
    the parent removes the child's key and publishes its ``grant.revoked`` (parent ended)."""
    parent_agent, child_agent = agents("b"), agents("b")  # grants of minutes
    grants = tap(topics.GRANTS.name)
    with agent_client(settings, parent_agent) as a:
        parent = fraud_grant(a, (FREEZE,))
        assert parent.grant_id
        d = a.delegate(parent.grant_id, child_agent, [FREEZE], duration_s=600, reason="hand over")
    child_id = d.grant_id
    assert d.outcome == "granted" and child_id, d.reasons
    member = f"{child_agent}{keys.MEMBER_SEP}{child_id}"
    children = keys.children(parent_agent, parent.grant_id)
    assert rclient.sismember(children, member)
    worker.stop()  # nothing but the CLI may rebuild the view
    try:
        rclient.flushall()
        assert not rclient.exists(children, keys.grant(child_agent, child_id))
        _operator(settings, "grants", "rebuild")
    finally:
        worker.start()
        worker.wait_ready()
    assert rclient.exists(keys.grant(child_agent, child_id)) == 1, "child not restored"
    assert rclient.sismember(children, member), "children set not restored"
    assert rclient.pttl(children) > 0  # it expires, like every key of a grant
    _operator(settings, "grants", "revoke", parent.grant_id, "--agent", parent_agent,
              "--reason", "compromised")
    [ended, *again] = grants.wait_for(GrantRevoked, lambda e: e.grant_id == child_id)
    assert all(e == ended for e in again)
    assert ended.rule == "delegation-parent-ended" and parent.grant_id in ended.reason
    wait_until(lambda: not rclient.exists(keys.grant(child_agent, child_id)), 30,
               "the child's key removed")
