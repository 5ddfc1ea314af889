"""`permbroker agents|keys|inventory` against the real worker, Kafka and Redis."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.cli.main import app
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> dict | list:  # type: ignore[type-arg]
    """Run one command with --json and return its parsed output (exit 0 required)."""
    result = CliRunner().invoke(app, [*args, "--json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_register_inventory_show_suspend_and_jwks(
    worker: WorkerProcess, settings: Settings, tmp_path: Path, run_id: str,
) -> None:
    """keygen (0600 key file), register, inventory (holds, last acted, no-owner flag), show,
    suspend, and the published JWKS; every list command speaks JSON."""
    env = {**role_access(settings, topics.OPERATOR).env(),
           "PERMBROKER_REDIS_URL": settings.redis_url,
           "PERMBROKER_STACK_DIR": str(settings.stack_dir),
           "PERMBROKER_POLICY_PATH": str(settings.policy_path),
           "PERMBROKER_AGENT_KEY_DIR": str(tmp_path / "agent-keys")}
    agent = f"cli-{run_id}"
    made = cli(env, "agents", "keygen", "--agent", agent)
    assert isinstance(made, dict)
    key_file = Path(made["key_file"])
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "private" not in json.dumps(made) and "PRIVATE" not in json.dumps(made)
    (tmp_path / "pub.json").write_text(json.dumps(made["public_jwk"]))
    cli(env, "agents", "register", "--agent", agent, "--class", "reporting", "--owner", "none",
        "--model", "report-llm:1.4@sha256:9b", "--public-key", str(tmp_path / "pub.json"))
    store = AgentKeyStore(tmp_path / "agent-keys")
    with AgentClient(agent, role_access(settings, topics.AGENT), keys=store) as client:
        d = client.request_escalation(["reports:ledger.export"], duration_s=60,
                                      reason="month end", confidence=0.9)
    assert d.outcome == "granted"
    rows = cli(env, "inventory")
    assert isinstance(rows, list)
    row = next(r for r in rows if r["agent_id"] == agent)
    assert row["baseline"] == ["reports:ledger.read"] and row["model"].startswith("report-llm 1.4")
    assert [h["grant_id"] for h in row["holds"]] == [d.grant_id]
    assert row["last_acted"] is not None and "no-owner" in row["flags"]
    shown = cli(env, "agents", "show", agent)
    assert isinstance(shown, dict)
    assert shown["status"] == "active" and shown["active_kids"] == [made["kid"]]
    result = CliRunner().invoke(app, ["agents", "suspend", agent, "--reason", "no owner"],
                                env=env)
    assert result.exit_code == 0, result.output
    listed = cli(env, "agents", "list")
    assert isinstance(listed, list)
    assert next(r for r in listed if r["agent_id"] == agent)["status"] == "suspended"
    jwks = CliRunner().invoke(app, ["keys", "jwks"], env=env)
    assert jwks.exit_code == 0 and json.loads(jwks.stdout)["keys"]
    assert "PRIVATE KEY" not in worker.log_text()  # no key material in the worker's log
    assert "PRIVATE KEY" not in jwks.stdout
