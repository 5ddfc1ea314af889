"""Revocation by selector on a real Kafka and Redis: the dry run and the real run name one set."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from broker.api.app import create_app
from broker.cli.main import app as cli
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import GrantRevoked, ModelInfo
from tests.support.enforcement import FREEZE
from tests.support.identities import (
    Registrar,
    agent_client,
    api_settings,
    new_service,
    operator_auth,
    shared_trust,
)
from tests.support.taps import Tap

pytestmark = pytest.mark.integration


def _on_version(registrar: Registrar, agent: str, version: str, suite: str) -> None:
    seed = registrar.seed(agent)
    model = ModelInfo(name=seed.model.name, version=version, digest=seed.model.digest)
    registrar.operator.update(seed.model_copy(update={"model": model,
                                                      "labels": {"suite": suite}}),
                              reason=f"model upgrade to {version}")


def _grant(agent: str, settings: Settings) -> str:
    with agent_client(settings, agent) as client:
        decision = client.request_escalation(
            [FREEZE], resources=["acct-7"], duration_s=300, reason="fraud ring",
            confidence=0.95)
    assert decision.outcome == "granted" and decision.grant_id, decision.reasons
    return decision.grant_id


def _cli(settings: Settings, *args: str) -> dict[str, object]:
    env = {**role_access(settings, topics.OPERATOR).env(),
           "PERMBROKER_REDIS_URL": settings.redis_url,
           "PERMBROKER_POLICY_PATH": str(settings.policy_path)}
    result = CliRunner().invoke(cli, ["revoke", *args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    parsed: dict[str, object] = json.loads(result.output)
    return parsed


def test_revoke_by_model_version_revokes_exactly_the_grants_of_that_version(
    worker: WorkerProcess, settings: Settings, agents: Callable[[str], str],
    registrar: Registrar, run_id: str, tap: Callable[[str], Tap],
) -> None:
    """Agents on two versions hold grants; the dry run lists the new version's agents and grants
    (absolute expiry, time left); the real run revokes exactly those; the others keep theirs."""
    service, old, new = role_access(settings, topics.SERVICE), f"3.1-{run_id}", f"3.2-{run_id}"
    on_old, on_new = [agents("b") for _ in range(2)], [agents("b") for _ in range(2)]
    for agent in on_old:
        _on_version(registrar, agent, old, run_id)
    for agent in on_new:
        _on_version(registrar, agent, new, run_id)
    grants = {agent: _grant(agent, settings) for agent in on_old + on_new}
    revoked_tap = tap(topics.GRANTS.name)
    with GrantView(service, trust=shared_trust(settings)) as view:
        assert view.wait_ready(30)
        dry = _cli(settings, "--model-version", new, "--dry-run")
        listed = {a["agent_id"]: a for a in dry["agents"]}  # type: ignore[attr-defined]
        assert set(listed) == set(on_new)
        assert sorted(dry["grant_ids"]) == sorted(grants[a] for a in on_new)  # type: ignore[call-overload]
        for agent in on_new:
            (shown,) = listed[agent]["grants"]
            assert shown["grant_id"] == grants[agent] and shown["remaining_s"] > 0
            assert datetime.fromisoformat(shown["expires_at"]) > datetime.now(UTC)
        _api_agrees(settings, on_new[0], new, dry["grant_ids"])  # type: ignore[arg-type]
        by_label = _cli(settings, "--label", f"suite={run_id}", "--model-version", old,
                        "--dry-run")
        assert {a["agent_id"] for a in by_label["agents"]} == set(on_old)  # type: ignore[attr-defined]
        real = _cli(settings, "--model-version", new, "--reason", "model recalled")
        assert real["revoked_grant_ids"] == dry["grant_ids"]
        assert {a["agent_id"] for a in real["agents"]} == set(on_new)  # type: ignore[attr-defined]
        for agent in on_new:
            revoked_tap.wait_for(GrantRevoked, lambda r, g=grants[agent]: r.grant_id == g)
        for r in real["revocations"]:  # type: ignore[attr-defined]
            assert not view.allows(r["agent_id"], FREEZE, "acct-7",
                                   at_least=r["consistency_token"]).allowed
        for agent in on_old:
            assert view.allows(agent, FREEZE, "acct-7").allowed
    assert not revoked_tap.events(GrantRevoked, lambda r: r.grant_id in
                                  {grants[a] for a in on_old})
    after = _cli(settings, "--model-version", new, "--dry-run")
    assert after["grant_ids"] == []


def _api_agrees(settings: Settings, agent: str, version: str, grant_ids: list[str]) -> None:
    """POST /v1/operator/revoke as a dry run lists the same grants; bad calls are refused."""
    op, svc = operator_auth(settings), new_service(settings, f"selector-{agent}")
    with TestClient(create_app(api_settings(settings, agent))) as api:
        path = "/v1/operator/revoke"
        body = {"model_version": version, "dry_run": True}
        assert api.post(path, json=body, auth=svc).status_code == 403
        assert api.post(path, json={"dry_run": True}, auth=op).status_code == 422
        assert api.post(path, json={**body, "dry_run": False},
                        auth=op).status_code == 422  # no reason
        listed = api.post(path, json=body, auth=op)
        assert listed.status_code == 200, listed.text
        assert listed.json()["grant_ids"] == grant_ids and listed.json()["dry_run"] is True
