"""Every Kafka the tooling starts authenticates and authorizes (pure: files in a tmp dir, no JVM).

SASL/SCRAM-SHA-512 for clients and between brokers, SASL/PLAIN from a static user on the
controller listener, the StandardAuthorizer denying what no ACL allows; passwords generated per
stack, kept 0600, in server.properties (0600) and in the format's --add-scram users only.
"""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.config import Settings
from broker.errors import StackError
from broker.stack import cluster as stack_cluster
from broker.stack import kafka as stack_kafka
from broker.stack import local as stack_local
from broker.stack.credentials import BROKER, CONTROLLER, Credentials
from schemas.topics import ROLES


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_secured(props: dict[str, str], credentials: Credentials) -> None:
    assert props["listener.security.protocol.map"] == \
        "CLIENT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT"
    assert "PLAINTEXT://" not in props["listeners"] and props["listeners"].startswith("CLIENT://")
    assert props["inter.broker.listener.name"] == "CLIENT"
    assert props["listener.name.client.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    assert props["authorizer.class.name"] == \
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["auto.create.topics.enable"] == "false"
    assert set(props["super.users"].split(";")) == {"User:admin", "User:broker",
                                                     "User:controller"}
    assert f'password="{credentials.password(BROKER)}"' in \
        props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert f'user_controller="{credentials.password(CONTROLLER)}"' in \
        props["listener.name.controller.plain.sasl.jaas.config"]


def test_the_single_broker_authenticates_and_authorizes_and_keeps_its_secrets_0600(
    tmp_path: Path,
) -> None:
    """server.properties: SASL everywhere, the authorizer, three super users; mode 0600."""
    credentials = Credentials.generate()
    path = stack_kafka.write_properties(Settings(stack_dir=tmp_path), tmp_path, credentials)
    _assert_secured(_props(path), credentials)
    assert _mode(path) == 0o600


def test_cluster_nodes_are_secured_like_the_single_broker(tmp_path: Path) -> None:
    """Each node of the three-node cluster: the same security, one users file for all."""
    spec = stack_cluster.ClusterSpec(tmp_path, 47100, nodes=3)
    paths = [stack_cluster.write_node_properties(spec, n) for n in (1, 2, 3)]
    for path in paths:
        _assert_secured(_props(path), spec.credentials())
        assert _mode(path) == 0o600
    assert _mode(spec.credentials_file) == 0o600
    assert spec.admin().username == "admin" and spec.admin().sasl


def test_each_stack_gets_its_own_random_passwords_written_0600(tmp_path: Path) -> None:
    """One password per role and internal user, all different; the file reads back the same."""
    one, two = Credentials.generate(), Credentials.generate()
    assert set(one.passwords) == {*ROLES, BROKER, CONTROLLER}
    assert len(set(one.passwords.values())) == len(one.passwords)
    assert not set(one.passwords.values()) & set(two.passwords.values())
    path = tmp_path / "kafka" / "credentials.json"
    one.write(path)
    assert _mode(path) == 0o600 and json.loads(path.read_text()) == dict(one.passwords)
    assert Credentials.read(path) == one
    assert repr(one) == "Credentials()"


def test_the_log_dir_is_formatted_with_every_scram_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """StorageTool format gets --add-scram for every role and the inter-broker user."""
    seen: list[list[str]] = []

    def run(cmd: list[str], **_kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(stack_kafka, "tool", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(stack_kafka.subprocess, "run", run)
    credentials = Credentials.generate()
    stack_kafka.format_once(tmp_path / "libs", tmp_path, tmp_path / "server.properties",
                            credentials)
    argv = seen[0]
    specs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--add-scram"]
    assert specs == [f"SCRAM-SHA-512=[name={user},password={credentials.password(user)}]"
                     for user in (*ROLES, BROKER)]


def test_a_stack_formatted_without_users_is_not_reused_silently(tmp_path: Path) -> None:
    """Data formatted without the users file (an older stack) asks to be wiped; else the
    passwords are generated once and kept."""
    settings = Settings(stack_dir=tmp_path)
    kafka_dir = tmp_path / "kafka"
    (kafka_dir / "data").mkdir(parents=True)
    made = stack_local.stack_credentials(settings, kafka_dir, lambda _m: None)
    assert stack_local.stack_credentials(settings, kafka_dir, lambda _m: None) == made
    (kafka_dir / "credentials.json").unlink()
    (kafka_dir / "data" / "meta.properties").write_text("formatted\n")
    with pytest.raises(StackError, match="permbroker stack down --wipe"):
        stack_local.stack_credentials(settings, kafka_dir, lambda _m: None)


def test_the_container_kafka_is_configured_like_the_native_stack() -> None:
    """deploy/kafka-start.sh (docker-compose.yml, the tests' Docker path) sets every security
    property of the native stack to the same value (its inter-broker listener is INTERNAL)."""
    script = (Path(__file__).resolve().parents[3] / "deploy" / "kafka-start.sh").read_text()
    body = script.split("<<PROPERTIES\n", 1)[1].split("\nPROPERTIES\n", 1)[0]
    container = dict(line.split("=", 1) for line in body.splitlines())
    native = stack_kafka.security(Credentials.generate())
    for key, value in native.items():
        key = key.replace("listener.name.client.", "listener.name.internal.")
        assert key in container, key
        if "jaas" not in key:
            assert container[key] == value, key
    assert container["inter.broker.listener.name"] == "INTERNAL"
    assert set(container["listener.security.protocol.map"].split(",")) == {
        "HOST:SASL_PLAINTEXT", "CONTROLLER:SASL_PLAINTEXT", "INTERNAL:SASL_PLAINTEXT"}
    assert container["listener.name.host.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    for user in (*ROLES, BROKER):
        assert user in script.split("for user in ", 1)[1].split(";", 1)[0].split(), user
