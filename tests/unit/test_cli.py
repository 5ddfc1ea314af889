"""The permbroker CLI's pure commands (no Kafka or Redis): policy validation and argument errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from typer.testing import CliRunner

from broker.adapters.crypto.assertions import Identities, Verified
from broker.adapters.crypto.keystore import OperatorDirectory
from broker.adapters.crypto.trust import ServiceDirectory
from broker.adapters.kafka.registry_view import Registry
from broker.cli.main import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def test_policy_validate_reports_the_revision() -> None:
    """A valid bundle prints its revision and agents, and exits 0."""
    result = runner.invoke(app, ["policy", "validate", str(ROOT / "policies" / "fraud"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] and report["revision"].startswith("sha256:")
    assert "fraud-detector-7" in report["agents"]


def test_policy_validate_names_file_line_and_rule(tmp_path: Path) -> None:
    """A bad CEL condition is reported with the file, the line and the rule, exit code 2."""
    text = (ROOT / "policies" / "fraud" / "policy.yaml").read_text()
    broken = text.replace("request.risk_score >= 0.8", "request.risk_score >= ")
    (tmp_path / "policy.yaml").write_text(broken)
    line = (
        broken.splitlines().index(
            next(x for x in broken.splitlines() if "request.risk_score >= " in x)
        )
        + 1
    )
    result = runner.invoke(app, ["policy", "validate", str(tmp_path), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["valid"] is False and report["rule"] == "fraud-freeze-on-pattern"
    assert report["file"].endswith("policy.yaml") and report["line"] == line


def test_request_rejects_a_bad_duration() -> None:
    """`permbroker request --duration soon` fails before touching Kafka, saying what to use."""
    result = runner.invoke(
        app,
        [
            "request",
            "--agent",
            "a1",
            "--scope",
            "x:y.z",
            "--reason",
            "r",
            "--confidence",
            "0.9",
            "--duration",
            "soon",
        ],
    )
    assert result.exit_code == 1
    assert "not a duration" in result.output


def test_services_keygen_register_list_and_an_open_services_file_is_refused(
    tmp_path: Path,
) -> None:
    """An enforcement point's key is created 0600 and registered in the services file (0600);
    the file is refused, naming it and its mode, once others may write it."""
    # None unsets a variable a session fixture may have set (the files are this test's own).
    env: dict[str, str | None] = {"PERMBROKER_STACK_DIR": str(tmp_path),
                                  "PERMBROKER_SERVICES_FILE": None,
                                  "PERMBROKER_SERVICE_KEY_DIR": None}
    made = runner.invoke(app, ["services", "keygen", "payments-api", "--json"], env=env)
    assert made.exit_code == 0, made.output
    kid = json.loads(made.stdout)["public_key"]["kid"]
    key_file = tmp_path / "keys" / "services" / "payments-api.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["services", "keygen", "payments-api"], env=env)
    assert again.exit_code != 0 and "already has a key" in again.output
    registered = runner.invoke(app, ["services", "register", "payments-api"], env=env)
    assert registered.exit_code == 0, registered.output
    services = tmp_path / "keys" / "services.json"
    assert services.stat().st_mode & 0o777 == 0o600
    listed = runner.invoke(app, ["services", "list", "--json"], env=env)
    assert json.loads(listed.stdout) == [{"principal": "service:payments-api", "kid": kid}]
    services.chmod(0o666)
    refused = runner.invoke(app, ["services", "list"], env=env)
    assert refused.exit_code != 0 and "writable by others" in refused.output
    assert f"chmod 600 {services}" in refused.output.replace("\n", "")


def test_keys_add_an_operator_and_mint_its_assertions(tmp_path: Path) -> None:
    """keys add-operator writes a 0600 key and trusts it; keys assertion signs a call with it
    that the API's verifier accepts for that call only."""
    env = {"PERMBROKER_STACK_DIR": str(tmp_path)}
    key_file = tmp_path / "bob.json"
    added = runner.invoke(app, ["keys", "add-operator", "bob", "--key-file", str(key_file)],
                          env=env)
    assert added.exit_code == 0, added.output
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys" / "operators.json").stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["keys", "add-operator", "bob", "--key-file", str(key_file)],
                          env=env)
    assert again.exit_code != 0 and "exists already" in again.output
    minted = runner.invoke(app, ["keys", "assertion", "GET", "/v1/operator/revocations"],
                           env={**env, "PERMBROKER_OPERATOR_KEY_FILE": str(key_file)})
    assert minted.exit_code == 0, minted.output
    ids = Identities(OperatorDirectory(tmp_path / "keys" / "operators.json"),
                     ServiceDirectory(tmp_path / "keys" / "services.json"), Registry(),
                     max_life_s=120, leeway_s=5)
    found = ids.verify(minted.stdout.strip(), datetime.now(UTC),
                       ("GET", "/v1/operator/revocations"))
    assert isinstance(found, Verified) and found.principal.id == "operator:bob"
    other = ids.verify(minted.stdout.strip(), datetime.now(UTC), ("GET", "/v1/check"))
    assert not isinstance(other, Verified)
