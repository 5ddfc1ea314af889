"""Baseline entitlements on real Kafka + Redis: a registered agent's baseline is allowed at a
view with no escalation, withdrawn by suspension (at the suspension's consistency token) and by
decommissioning, restored on resume; a scope outside it stays denied; forged statements change
nothing."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.redis import keyspace as keys
from broker.api.app import create_app
from broker.cli.main import app
from broker.config import Settings
from broker.errors import CommandRefused
from broker.sdk.resource.view import GrantView, Verdict
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics
from schemas.events import AuditRecord, BaselineEntitlement
from streams.identity.baseline import RESTATED_FOR_S
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import (
    Registrar,
    agent_client,
    api_settings,
    new_service,
    shared_trust,
)
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
READ = "payments:transactions.read"  # the fraud-detection class's baseline


def _allowed(view: GrantView, agent: str, scope: str) -> Verdict | None:
    verdict = view.allows(agent, scope, "acct-9")
    return verdict if verdict.allowed else None


def _forge(settings: Settings, agent: str, *read: str) -> None:
    """Statements the broker never made, past the ACLs: unsigned and signed by a foreign key,
    one granting a scope outside the baseline, one withdrawing it, both at a far revision; on
    the shared grant topics and on ``read`` (the topics the views read)."""
    key, now = SigningKey.generate(), datetime.now(UTC)
    writer = Publisher(role_access(settings, topics.ADMIN), source="/forged")
    for n, (status, scopes) in enumerate((("active", (READ, FREEZE)), ("withdrawn", ()))):
        event = BaselineEntitlement(
            entitlement_id=f"baseline-forged-{n}", agent_id=agent, status=status, scopes=scopes,
            registry_revision=1_000_000, policy_revision="forged", cause_id="forged",
            effective_at=now)
        for topic in {topics.GRANTS.name, topics.GRANTS_PAYMENTS.name, *read}:
            m = encode(event, source="/permbroker/worker/forged")
            writer.publish_raw(topic, m)
            writer.publish_raw(topic, sign_message(m, key, "permbroker"))


def test_baseline_is_allowed_withdrawn_on_suspension_and_restored_on_resume(
    worker: object, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """No escalation: the baseline scope is allowed (as a baseline entitlement, on any
    resource) at a view of the default topic and of the namespace topic; FREEZE is not.
    Suspended: denied at the suspension's token. Resumed: allowed again at its token.
    Forged statements (a wider baseline, a withdrawal) change nothing."""
    agent, service = agents("f"), role_access(settings, topics.SERVICE)
    trust = shared_trust(settings)
    with GrantView(service, trust=trust) as whole, \
            GrantView(service, trust=trust, topic=topics.GRANTS_PAYMENTS.name) as payments:
        views = (whole, payments)
        assert all(v.wait_ready(30) for v in views)
        for view in views:
            verdict = wait_until(functools.partial(_allowed, view, agent, READ), 30,
                                 "the registration's baseline at the view")
            assert verdict is not None and verdict.grant is None and verdict.baseline is not None
            assert verdict.reason.startswith("baseline entitlement: baseline of class "
                                             "fraud-detection"), verdict.reason
            assert not view.allows(agent, FREEZE, "acct-9").allowed
        _forge(settings, agent, *(v.topic for v in views))
        suspended = registrar.operator.suspend(agent, reason="under investigation")
        assert suspended.consistency_token, suspended
        for view in views:
            denied = view.allows(agent, READ, "acct-9", at_least=suspended.consistency_token)
            assert not denied.allowed and not denied.unavailable, denied
            assert "withdrawn" in denied.reason and "under investigation" in denied.reason
        resumed = registrar.operator.resume(agent, reason="cleared")
        assert resumed.consistency_token, resumed
        for view in views:
            again = view.allows(agent, READ, "acct-1", at_least=resumed.consistency_token)
            assert again.allowed and again.baseline is not None, again
            assert not view.allows(agent, FREEZE, "acct-1").allowed  # the forgery was not applied


def test_check_says_the_verdict_is_a_baseline_entitlement(
    worker: object, settings: Settings, agents: Callable[[str], str],
) -> None:
    """/v1/check allows the baseline scope with ``entitlement: baseline`` and no grant."""
    agent = agents("f")
    with TestClient(create_app(api_settings(settings, agent))) as api:
        wait_until(lambda: api.get("/readyz").status_code == 200, 30, "the API to be ready")
        auth = new_service(settings, "payments-baseline-check")

        def check(scope: str) -> dict[str, Any]:
            body = {"agent_id": agent, "scope": scope, "resource": "acct-3"}
            answer: dict[str, Any] = api.post("/v1/check", json=body, auth=auth).json()
            return answer

        def baseline_allowed() -> dict[str, Any] | None:
            answer = check(READ)
            return answer if answer["allowed"] else None

        allowed = wait_until(baseline_allowed, 30, "the baseline at the API's view")
        assert allowed is not None
        assert allowed["entitlement"] == "baseline" and allowed["grant_id"] is None, allowed
        denied = check(FREEZE)
        assert not denied["allowed"] and denied["entitlement"] is None, denied


def test_decommission_revokes_retires_keys_withdraws_the_baseline_and_keeps_the_audit(
    worker: object, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
    tap: Callable[[str], Tap],
) -> None:
    """At the decommission's token the grant and the baseline are gone; every key is revoked;
    the audit holds the decommission; registering the id again is refused until an operator
    reinstates it with a new key, which restores the baseline."""
    agent, service = agents("f"), role_access(settings, topics.SERVICE)
    audit = tap(topics.AUDIT.name)
    with GrantView(service, trust=shared_trust(settings)) as view, \
            agent_client(settings, agent) as client:
        assert view.wait_ready(30)
        granted = fraud_grant(client, (FREEZE,))
        assert view.allows(agent, FREEZE, "acct-1", at_least=granted.consistency_token).allowed
        gone = registrar.operator.decommission(agent, reason="model retired")
        assert gone.consistency_token
        for scope in (FREEZE, READ):
            denied = view.allows(agent, scope, "acct-1", at_least=gone.consistency_token)
            assert not denied.allowed and not denied.unavailable, denied
        assert view.grant_state(agent, granted.grant_id or "") == "ended"
    record = audit.wait_for(AuditRecord, lambda a: a.kind == "registry.decommissioned"
                            and a.agent_id == agent)[0]
    revoked = record.inputs.get("revoked_grants")
    assert isinstance(revoked, list) and granted.grant_id in revoked, record.inputs
    assert audit.wait_for(AuditRecord, lambda a: a.kind == "baseline.withdrawn"
                          and a.agent_id == agent)
    stored = registrar.store.load(agent)
    with pytest.raises(CommandRefused, match="reinstate"):
        registrar.operator.register(registrar.seed(agent), stored.current.jwk, reason="again")
    back = registrar.operator.reinstate(agent, SigningKey.generate().jwk, reason="new deployment")
    with GrantView(service, trust=shared_trust(settings)) as later:  # a view started later
        assert later.wait_ready(30)
        assert later.allows(agent, READ, "acct-1", at_least=back.consistency_token).allowed


def _held_at(settings: Settings, agent: str, at: datetime) -> list[dict[str, Any]] | None:
    """``permbroker audit replay --as-of AT --agent AGENT --json`` baselines (None: not yet
    sealed that far, or the CLI failed)."""
    env = {k: v for k, v in worker_env(settings, role_access(settings, topics.OPERATOR)).items()
           if k.startswith("PERMBROKER_")}
    done = CliRunner().invoke(app, ["audit", "replay", "--as-of", at.isoformat(), "--agent",
                                    agent, "--json"], env=env)
    if done.exit_code != 0:
        return None
    held: list[dict[str, Any]] = json.loads(done.stdout)["baselines"]
    return held


def test_replay_answers_what_the_agent_could_do_while_suspended_and_after(
    worker: object, settings: Settings, agents: Callable[[str], str], registrar: Registrar,
) -> None:
    """From the sealed audit: the baseline held after resuming, none while suspended."""
    agent = agents("f")
    suspended = registrar.operator.suspend(agent, reason="checking")
    resumed = registrar.operator.resume(agent, reason="fine")

    def after_resume() -> list[dict[str, Any]] | None:
        """The baselines held at the resume, once the resume's own statement is sealed (the
        registration's alone would answer too, before the suspension is sealed)."""
        held = _held_at(settings, agent, resumed.answered_at) or []
        since = resumed.answered_at - timedelta(milliseconds=1)  # the records' ms precision
        return held if any(datetime.fromisoformat(str(b["stated_at"])) >= since
                           for b in held) else None

    held = wait_until(after_resume, 60, "the resumed baseline in the sealed audit")
    assert held is not None and [b["scopes"] for b in held] == [[READ]], held
    assert _held_at(settings, agent, suspended.answered_at) == []


def test_a_worker_opening_soon_after_a_complete_restatement_does_not_state_every_baseline_again(
    worker: WorkerProcess, rclient: redis.Redis,
) -> None:
    """A worker that opens states every agent's baseline again (a signed record per agent on
    every grant topic, and its audit record), unless a worker completed that under the same
    policy revisions and grant topics less than RESTATED_FOR_S ago; without that record, it
    states them all and records it."""
    wait_until(lambda: rclient.get(keys.BASELINES_STATED) is not None, 60,
               "the session worker's restatement recorded")
    assert 0 < int(rclient.ttl(keys.BASELINES_STATED)) <= RESTATED_FOR_S
    worker.stop()
    worker.start()
    worker.wait_ready()
    wait_until(lambda: "not stated again" in worker.log_text(), 60, "the restatement skipped")
    assert "stated the baseline entitlement of" not in worker.log_text()
    rclient.delete(keys.BASELINES_STATED)
    worker.stop()
    worker.start()
    worker.wait_ready()
    wait_until(lambda: "stated the baseline entitlement of" in worker.log_text(), 120,
               "every baseline stated again")
    wait_until(lambda: rclient.get(keys.BASELINES_STATED) is not None, 30,
               "the restatement recorded again")
