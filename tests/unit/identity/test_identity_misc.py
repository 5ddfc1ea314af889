"""Key files (0600, refused when open to others), the inventory's flags, AI attributes in CEL."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.crypto.directory import (
    Principals,
    add_principal,
    load_principals,
    read_anchor,
    read_public,
)
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import (
    AgentKeyStore,
    add_operator,
    ensure_identity_files,
    load_operator,
    load_operators,
    read_keyring,
)
from broker.adapters.crypto.trust import SERVICES_FILE
from broker.config import Settings
from broker.errors import KeyFileError
from broker.identity.inventory import inventory_rows
from broker.policy import RiskContext, load_policy
from schemas.events import (
    AgentKey,
    AgentProfile,
    AgentRecord,
    EscalationRequested,
    GrantIssued,
    ModelInfo,
    PublicJwk,
)
from schemas.signing import SERVICE_PREFIX

ROOT = Path(__file__).resolve().parents[3]
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
JWK = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")


def test_key_files_are_private_and_an_open_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are written 0600 in a 0700 dir; a group/world-readable key file is refused; the
    public files that decide trust (operators, trust anchor) are 0600 too and refused when
    others may write them."""
    for name in ("BROKER_KEY_FILE", "OPERATOR_KEY_FILE", "OPERATORS_FILE", "AGENT_KEY_DIR",
                 "TRUST_ANCHOR"):
        monkeypatch.delenv(f"PERMBROKER_{name}", raising=False)  # only this test's directory
    settings = Settings(stack_dir=tmp_path)
    created = ensure_identity_files(settings)
    assert len(created) == 3 and ensure_identity_files(settings) == []
    for name in ("broker", "operator", "operators", "trust-anchor"):
        assert settings.key_path(name).stat().st_mode & 0o777 == 0o600, name
    issuer, anchored = read_anchor(settings.key_path("trust-anchor"))
    assert issuer == "permbroker" and [k.kid for k in anchored] == [
        k.key.kid for k in read_keyring(settings.key_path("broker"))[1]]
    for name in ("operators", "trust-anchor"):
        os.chmod(settings.key_path(name), 0o664)
        with pytest.raises(KeyFileError, match=f"writable by others.*chmod 600 {tmp_path}"):
            read_public(settings.key_path(name), name)
        os.chmod(settings.key_path(name), 0o644)  # readable by all is fine: nothing secret
        read_public(settings.key_path(name), name)
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    principal, key = load_operator(settings.key_path("operator"))
    assert principal.startswith("operator:") and "PRIVATE" not in repr(key)
    os.chmod(settings.key_path("operator"), 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_operator(settings.key_path("operator"))
    store = AgentKeyStore(tmp_path / "agents")
    keys = store.generate("fraud-1")
    assert store.load("fraud-1").current.kid == keys.current.kid
    with pytest.raises(KeyFileError, match="already has a key"):
        store.generate("fraud-1")
    with pytest.raises(KeyFileError, match="agents keygen --agent nobody"):
        store.load("nobody")


def test_a_trust_file_others_may_write_is_refused_naming_it_and_its_mode(
    tmp_path: Path,
) -> None:
    """operators.json and services.json decide whom the broker trusts: group- or
    world-writable, they are refused with the file, its mode and the fix."""
    operators, services = tmp_path / "operators.json", tmp_path / "services.json"
    key = SigningKey.generate()
    add_operator(operators, "operator:alice", key.jwk)
    add_principal(services, "service:payments", key.jwk, SERVICES_FILE)

    def load_services(path: Path) -> Principals:
        return load_principals(path, SERVICE_PREFIX, SERVICES_FILE)

    assert load_operators(operators)[key.kid][0] == "operator:alice"
    assert load_services(services)[key.kid][0] == "service:payments"
    os.chmod(operators, 0o644)  # readable by others is fine: public keys
    assert key.kid in load_operators(operators)
    for path, load, mode in ((operators, load_operators, 0o664), (services, load_services, 0o646)):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError) as refused:
            load(path)
        assert str(path) in str(refused.value) and oct(mode) in str(refused.value)
        assert "chmod 600" in str(refused.value)
    with pytest.raises(KeyFileError, match="operator:<name>"):
        add_operator(operators, "service:payments", key.jwk)


def record(agent: str, owner: str, key_age: timedelta, status: str = "active") -> AgentRecord:
    profile = AgentProfile(agent_id=agent, agent_class="fraud-detection", owner=owner,
                           model=ModelInfo(name="gbm", version="3.2", digest="sha256:aa"))
    return AgentRecord(agent_id=agent, profile=profile, status=status,  # type: ignore[arg-type]
                       keys=(AgentKey(kid="kid-00000001", jwk=JWK, added_at=NOW - key_age),),
                       revision=1, change="registered", changed_at=NOW, changed_by="operator:a",
                       cause_id="c-1", registered_at=NOW)


def test_inventory_shows_holdings_and_flags_owners_keys_and_status() -> None:
    """No owner, a stale key and a suspension are flagged; holdings and baselines are shown."""
    classes = load_policy(ROOT / "policies" / "fraud").classes
    grant = GrantIssued(grant_id="g-1", agent_id="a", request_id="r-1",
                        scopes=("payments:accounts.freeze",), resources=("acct-1",),
                        issued_at=NOW, expires_at=NOW + timedelta(seconds=20),
                        policy_revision="sha256:ab", rules=("r",))
    rows = inventory_rows(
        [record("a", "ops@example.com", timedelta(days=1)),
         record("b", "none", timedelta(days=90), status="suspended")],
        classes, {"a": [grant]}, {"a": NOW}, now=NOW, key_max_age=timedelta(days=30))
    a, b = rows
    assert a.flags == () and [g.grant_id for g in a.grants] == ["g-1"] and a.last_acted == NOW
    assert a.baseline == ("payments:transactions.read",)
    assert b.flags == ("no-owner", "stale-key", "suspended") and b.last_acted is None
    assert b.to_json()["flags"] == ["no-owner", "stale-key", "suspended"]


def test_policy_conditions_can_use_the_agents_ai_attributes(tmp_path: Path) -> None:
    """CEL sees agent.model.version, agent.training_data_ref and agent.confidence_threshold."""
    text = (ROOT / "policies" / "fraud" / "policy.yaml").read_text().replace(
        "when: request.confidence >= agent.confidence_threshold && request.risk_score >= 0.8",
        "when: request.confidence >= agent.confidence_threshold && agent.model.version == '3.2'"
        " && agent.training_data_ref.startsWith('s3://datasets/fraud/')")
    (tmp_path / "policy.yaml").write_text(text)
    policy = load_policy(tmp_path)
    profile = AgentProfile(agent_id="f", agent_class="fraud-detection", owner="o",
                           model=ModelInfo(name="gbm", version="3.2"),
                           training_data_ref="s3://datasets/fraud/2026-10",
                           ceiling=policy.classes["fraud-detection"].ceiling)
    request = EscalationRequested(request_id="r", agent_id="f",
                                  scopes=("payments:accounts.freeze",),
                                  resources=("acct-1",), duration_s=60, reason="x",
                                  confidence=0.95, requested_at=NOW)
    assert policy.evaluate(request, profile, RiskContext(), NOW).granted
    newer = profile.model_copy(update={"model": ModelInfo(name="gbm", version="3.3")})
    assert not policy.evaluate(request, newer, RiskContext(), NOW).granted
    elsewhere = profile.model_copy(update={"training_data_ref": "s3://other/x"})
    assert not policy.evaluate(request, elsewhere, RiskContext(), NOW).granted
