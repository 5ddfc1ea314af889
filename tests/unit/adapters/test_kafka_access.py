"""KafkaAccess: one value per process gives every client (confluent-kafka, aiokafka, faust) the
same servers, protocol and SCRAM user; contradictory settings are refused, never guessed."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from pathlib import Path

import faust
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.adapters.kafka.access import KafkaAccess
from broker.config import Settings
from broker.errors import ConfigError
from broker.stack.credentials import Credentials, role_access
from schemas.topics import ROLES
from streams.app import credentials

BOOT = "127.0.0.1:19092"


def _ca_file(tmp_path: Path) -> Path:
    """A self-signed CA certificate (PEM), as a SASL_SSL deployment hands its clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "permbroker test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_without_credentials_a_client_connects_plaintext_and_anonymous() -> None:
    """No username: PLAINTEXT, no SASL keys at all (what an unsecured dev cluster expects)."""
    kafka = KafkaAccess.from_settings(Settings(kafka_bootstrap=BOOT))
    assert kafka.confluent() == {"bootstrap.servers": BOOT, "security.protocol": "PLAINTEXT"}
    assert kafka.aiokafka() == {"bootstrap_servers": BOOT, "security_protocol": "PLAINTEXT"}
    assert credentials(kafka) is None
    assert kafka.principal == "User:ANONYMOUS"


def test_a_username_means_sasl_scram_for_every_client_and_the_password_is_never_shown() -> None:
    """confluent-kafka, aiokafka and faust all get the same SCRAM-SHA-512 user."""
    kafka = KafkaAccess.from_settings(Settings(
        kafka_bootstrap=BOOT, kafka_username="worker", kafka_password="s3cret-pw"))
    assert kafka.confluent() == {
        "bootstrap.servers": BOOT, "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "worker", "sasl.password": "s3cret-pw"}
    assert kafka.aiokafka() == {
        "bootstrap_servers": BOOT, "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "worker",
        "sasl_plain_password": "s3cret-pw"}
    faust_auth = credentials(kafka)
    assert isinstance(faust_auth, faust.SASLCredentials)
    assert (faust_auth.username, faust_auth.password) == ("worker", "s3cret-pw")
    assert faust_auth.mechanism.value == "SCRAM-SHA-512" and faust_auth.protocol.value == \
        "SASL_PLAINTEXT"
    assert "s3cret-pw" not in repr(kafka) and kafka.principal == "User:worker"


def test_sasl_ssl_builds_a_tls_client_config_from_the_ca_file(tmp_path: Path) -> None:
    """SASL_SSL: librdkafka gets the CA location, aiokafka and faust a context that trusts it."""
    ca = _ca_file(tmp_path)
    kafka = KafkaAccess.from_settings(Settings(
        kafka_bootstrap="kafka-1.example:9093", kafka_security_protocol="SASL_SSL",
        kafka_username="agent", kafka_password="pw", kafka_ca_file=ca))
    config = kafka.confluent()
    assert config["security.protocol"] == "SASL_SSL" and config["ssl.ca.location"] == str(ca)
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512" and config["sasl.username"] == "agent"
    context = kafka.aiokafka()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "permbroker test CA"),),)]
    faust_auth = credentials(kafka)
    assert faust_auth is not None and faust_auth.protocol.value == "SASL_SSL"


@pytest.mark.parametrize(("fields", "message"), [
    ({"kafka_security_protocol": "SASL_PLAINTEXT"}, "needs a username and a password"),
    ({"kafka_username": "worker"}, "needs a username and a password"),
    ({"kafka_security_protocol": "PLAINTEXT", "kafka_username": "worker",
      "kafka_password": "pw"}, "would not be sent"),
    ({"kafka_username": "worker", "kafka_password": "pw", "kafka_ca_file": "/ca.pem"},
     "not SASL_SSL"),
], ids=["sasl-without-user", "user-without-password", "user-on-plaintext", "ca-without-tls"])
def test_contradictory_settings_are_refused(fields: dict[str, str], message: str) -> None:
    """A setting that would be silently ignored (or a half credential) is a ConfigError."""
    with pytest.raises(ConfigError, match=message):
        KafkaAccess.from_settings(Settings(kafka_bootstrap=BOOT, **fields))  # type: ignore[arg-type]


def test_the_environment_of_a_child_process_gives_it_the_same_access(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """env() -> PERMBROKER_KAFKA_* -> Settings() -> the very same access, CA file included."""
    kafka = KafkaAccess(BOOT, "SASL_SSL", "SCRAM-SHA-512", "operator", "pw", _ca_file(tmp_path))
    for name, value in kafka.env().items():
        monkeypatch.setenv(name, value)
    assert KafkaAccess.from_settings(Settings()) == kafka
    plain = KafkaAccess(BOOT)
    for name, value in plain.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PERMBROKER_KAFKA_CA_FILE")
    assert KafkaAccess.from_settings(Settings()) == plain


def test_a_stack_with_users_gives_each_role_its_own_and_without_users_the_settings_rule(
    tmp_path: Path,
) -> None:
    """role_access: the role's SCRAM user from credentials.json; no file, the settings' access."""
    settings = Settings(kafka_bootstrap=BOOT, stack_dir=tmp_path)
    assert role_access(settings, "agent") == KafkaAccess(BOOT)
    users = tmp_path / "kafka" / "credentials.json"
    users.parent.mkdir()
    users.write_text(json.dumps({role: f"pw-{role}" for role in ROLES}))
    agent = role_access(settings, "agent")
    assert (agent.security_protocol, agent.username, agent.password) == (
        "SASL_PLAINTEXT", "agent", "pw-agent")
    with pytest.raises(ConfigError, match="no Kafka role 'root'"):
        role_access(settings, "root")
    users.write_text(json.dumps({"agent": "pw"}))
    with pytest.raises(ConfigError, match="lacks the password of admin"):
        Credentials.read(users)
