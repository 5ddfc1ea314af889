"""Delegation on the live stack: a child grant within its parent, its token's ``act`` claim,
and its end with the parent (revoked or released), seen at a view and in replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from joserfc import jwk, jws
from typer.testing import CliRunner

from broker.adapters.kafka.jwks import JwksView
from broker.cli.main import app
from broker.config import Settings
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import worker_env
from schemas import topics
from schemas.events import GrantRevoked
from tests.support.enforcement import FREEZE, PII, fraud_grant
from tests.support.identities import agent_client, shared_trust
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
TapFactory = Callable[[str], Tap]


def _operator(settings: Settings, *args: str) -> str:
    """``permbroker ARGS --json`` as an operator; its stdout."""
    env = worker_env(settings, role_access(settings, topics.OPERATOR))
    done = CliRunner().invoke(app, [*args, "--json"], env={
        **{k: v for k, v in env.items() if k.startswith("PERMBROKER_")}, "COLUMNS": "120"})
    assert done.exit_code == 0, done.output
    return done.stdout


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated:joserfc.errors.SecurityWarning")
def test_child_within_parent_token_names_delegator_and_revoked_parent_ends_child(
    worker: object, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """An over-wide delegation is narrowed (PII denied by default deny, a foreign resource
    dropped, the expiry clamped to the parent's); the child's token carries ``act`` naming the
    delegator (product verifier and joserfc); the revocation of the parent's agent denies the
    child at the view at the revocation's token, the cascade revokes the child (rule
    ``delegation-parent-ended``), and the revoked delegator can delegate nothing more."""
    parent_agent, child_agent = agents("f"), agents("f")
    grants, service = tap(topics.GRANTS.name), role_access(settings, topics.SERVICE)
    with JwksView.from_settings(settings, service) as keys, \
            GrantView(service, trust=shared_trust(settings)) as view, \
            agent_client(settings, parent_agent) as a, agent_client(settings, child_agent) as b:
        assert keys.wait_ready(30) and view.wait_ready(30)
        parent = fraud_grant(a)  # FREEZE and PII on acct-1 and acct-2
        assert parent.grant_id and parent.expires_at
        d = a.delegate(parent.grant_id, child_agent, [FREEZE, PII], resources=["acct-1", "acct-9"],
                       duration_s=3600, reason="ops takes over the freeze")
        assert d.outcome == "granted" and d.grant_id and d.consistency_token, d.reasons
        assert d.granted_scopes == (FREEZE,) and d.resources == ("acct-1",)
        assert [(x.scope, x.rule) for x in d.denied] == [(PII, "default-deny")]
        assert any("acct-9" in r and "narrowed" in r for r in d.reasons)
        assert d.expires_at == parent.expires_at and d.clamped_by is not None
        assert d.clamped_by.startswith(f"parent grant {parent.grant_id}")
        assert view.allows(child_agent, FREEZE, "acct-1", at_least=d.consistency_token)
        assert not view.allows(child_agent, FREEZE, "acct-2")
        [child] = [g for g in view.active(child_agent) if g.grant_id == d.grant_id]
        assert child.parent_grant_id == parent.grant_id and child.delegators == (parent_agent,)
        assert child.expires_at <= parent.expires_at

        token = b.grant_token(d.grant_id, "payments")
        claims = GrantTokenVerifier(keys, audience="payments", grants=view).verify(token.token)
        assert claims.agent_id == child_agent and claims.delegators == (parent_agent,)
        public = keys.get(str(jws.extract_compact(token.token.encode()).headers()["kid"]))
        assert public is not None
        key = jwk.import_key(public.model_dump(exclude_none=True))
        found = jws.deserialize_compact(token.token, key, algorithms=["EdDSA"])
        payload = json.loads(found.payload)
        assert payload["sub"] == child_agent and payload["act"] == {"sub": parent_agent}

        revoked = json.loads(_operator(settings, "agents", "revoke", parent_agent,
                                       "--reason", "compromised", "--acks-wait", "0"))
        verdict = view.allows(child_agent, FREEZE, "acct-1",
                              at_least=revoked["consistency_token"])
        assert not verdict and not verdict.unavailable  # denied on the merits, at that token
        [ended, *again] = grants.wait_for(GrantRevoked, lambda e: e.grant_id == d.grant_id)
        assert all(e == ended for e in again)  # at least once, always the same event
        assert ended.rule == "delegation-parent-ended" and parent.grant_id in ended.reason
        wait_until(lambda: view.grant_state(child_agent, d.grant_id) == "ended", 30,
                   "the child's revocation at the view")
        again = a.delegate(parent.grant_id, child_agent, [FREEZE], duration_s=5, reason="again")
        assert again.outcome == "denied" and again.grant_id is None
    [cut] = {e.revoked_at: e for e in grants.wait_for(
        GrantRevoked, lambda e: e.grant_id == parent.grant_id)}.values()
    _replay_ends_the_child_with_its_parent(settings, parent_agent, child_agent, parent.grant_id,
                                           d.grant_id, cut.revoked_at)


def _as_of(settings: Settings, agent: str, at: datetime) -> list[str] | None:
    """The grant ids ``permbroker audit replay --as-of AT --agent AGENT`` lists (None: the CLI
    failed, e.g. the sealed audit not there yet)."""
    env = worker_env(settings, role_access(settings, topics.OPERATOR))
    done = CliRunner().invoke(app, ["audit", "replay", "--as-of", at.isoformat(), "--agent",
                                    agent, "--json"], env={
        **{k: v for k, v in env.items() if k.startswith("PERMBROKER_")}, "COLUMNS": "120"})
    if done.exit_code != 0:
        return None
    return [str(g["grant_id"]) for g in json.loads(done.stdout)["grants"]]


def _replay_ends_the_child_with_its_parent(settings: Settings, parent_agent: str,
                                           child_agent: str, parent_id: str, child_id: str,
                                           cut: datetime) -> None:
    """Replay of the sealed audit: the child was active just before its parent's revocation,
    and not at that instant (its own revocation, by the cascade, came later)."""
    before = cut - timedelta(milliseconds=1)
    wait_until(lambda: child_id in (_as_of(settings, child_agent, before) or []), 60,
               "the delegation in the sealed audit")
    wait_until(lambda: _as_of(settings, parent_agent, cut) == [], 60,
               "the parent's revocation in the sealed audit")
    assert parent_id in (_as_of(settings, parent_agent, before) or [])
    assert _as_of(settings, child_agent, cut) == []


def test_releasing_the_parent_ends_the_child_and_a_foreign_grant_cannot_be_delegated(
    worker: object, settings: Settings, agents: Callable[[str], str], tap: TapFactory,
) -> None:
    """Delegating a grant the agent does not hold is denied (rule delegation-parent); releasing
    the parent denies the child at the view at the release's token, and the cascade ends it."""
    parent_agent, child_agent, other = agents("f"), agents("f"), agents("f")
    grants, service = tap(topics.GRANTS.name), role_access(settings, topics.SERVICE)
    with GrantView(service, trust=shared_trust(settings)) as view, \
            agent_client(settings, parent_agent) as a, agent_client(settings, other) as c:
        assert view.wait_ready(30)
        parent = fraud_grant(a, (FREEZE,))
        assert parent.grant_id
        stolen = c.delegate(parent.grant_id, child_agent, [FREEZE], duration_s=5, reason="mine")
        assert stolen.outcome == "denied" and stolen.grant_id is None
        assert {x.rule for x in stolen.denied} == {"delegation-parent"}
        d = a.delegate(parent.grant_id, child_agent, [FREEZE], duration_s=15, reason="hand over")
        assert d.outcome == "granted" and d.grant_id and d.consistency_token, d.reasons
        assert d.resources == ("acct-1", "acct-2") and d.expires_at is not None
        assert d.expires_at <= parent.expires_at if parent.expires_at else False
        assert view.allows(child_agent, FREEZE, "acct-2", at_least=d.consistency_token)
        released = a.release(parent.grant_id, reason="done")
        assert released.outcome == "released" and released.consistency_token
        verdict = view.allows(child_agent, FREEZE, "acct-2", at_least=released.consistency_token)
        assert not verdict and not verdict.unavailable
        [ended, *again] = grants.wait_for(GrantRevoked, lambda e: e.grant_id == d.grant_id)
        assert all(e == ended for e in again)  # at least once, always the same event
        assert ended.rule == "delegation-parent-ended" and "released" in ended.reason
