"""How a process reaches Kafka: bootstrap servers plus its credentials, one value for every client.

Imports stdlib, broker.config and broker.errors. Built once from Settings at an entry point
(``KafkaAccess.from_settings``) and handed to every Kafka client: the confluent-kafka helpers
(``confluent()``), aiokafka (``aiokafka()``) and faust (streams/app.py builds its
``SASLCredentials`` from it). The password never shows in a repr, a log line or an error.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from pathlib import Path

from broker.config import KafkaProtocol, SaslMechanism, Settings
from broker.errors import ConfigError

_SASL: frozenset[str] = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})


@dataclass(frozen=True)
class KafkaAccess:
    """Where Kafka is and who this client is there (a SCRAM user of one role, or anonymous)."""

    bootstrap: str
    security_protocol: KafkaProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    username: str = ""
    password: str = field(default="", repr=False)
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.sasl and not (self.username and self.password):
            raise ConfigError(f"Kafka security protocol {self.security_protocol} needs a username "
                              "and a password (PERMBROKER_KAFKA_USERNAME, _PASSWORD)")
        if not self.sasl and self.username:
            raise ConfigError(f"a Kafka username ({self.username}) is set but the security "
                              f"protocol is {self.security_protocol}: it would not be sent")
        if self.ca_file is not None and self.security_protocol != "SASL_SSL":
            raise ConfigError(f"a Kafka CA file ({self.ca_file}) is set but the security "
                              f"protocol is {self.security_protocol}, not SASL_SSL")

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaAccess:
        """The access ``settings`` describe; ConfigError when they contradict each other."""
        username = settings.kafka_username
        password = settings.kafka_password.get_secret_value() if settings.kafka_password else ""
        protocol = settings.kafka_security_protocol or (
            "SASL_PLAINTEXT" if username else "PLAINTEXT")
        return cls(settings.kafka_bootstrap, protocol, settings.kafka_sasl_mechanism, username,
                   password, settings.kafka_ca_file)

    @property
    def sasl(self) -> bool:
        """True when the client authenticates (SASL_PLAINTEXT or SASL_SSL)."""
        return self.security_protocol in _SASL

    @property
    def principal(self) -> str:
        """The Kafka principal this access acts as (``User:worker``, ``User:ANONYMOUS``)."""
        return f"User:{self.username or 'ANONYMOUS'}"

    def as_user(self, username: str, password: str) -> KafkaAccess:
        """The same cluster as another SASL user (PLAINTEXT becomes SASL_PLAINTEXT)."""
        protocol: KafkaProtocol = "SASL_PLAINTEXT" if not self.sasl else self.security_protocol
        return replace(self, security_protocol=protocol, username=username, password=password)

    def anonymous(self) -> KafkaAccess:
        """The same cluster without credentials (what an unauthenticated client would send)."""
        return KafkaAccess(self.bootstrap)

    def confluent(self) -> dict[str, str | int | float | bool]:
        """confluent-kafka (librdkafka) settings: servers, protocol, SASL, CA."""
        config: dict[str, str | int | float | bool] = {"bootstrap.servers": self.bootstrap,
                                     "security.protocol": self.security_protocol}
        if self.sasl:
            config.update({"sasl.mechanisms": self.sasl_mechanism,
                           "sasl.username": self.username, "sasl.password": self.password})
        if self.ca_file is not None:
            config["ssl.ca.location"] = str(self.ca_file)
        return config

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a SASL_SSL client (the CA file, else the system's CAs), else None."""
        if self.security_protocol != "SASL_SSL":
            return None
        cafile = str(self.ca_file) if self.ca_file is not None else None
        return ssl.create_default_context(cafile=cafile)

    def aiokafka(self) -> dict[str, object]:
        """Keyword arguments of AIOKafkaProducer / AIOKafkaConsumer for this access."""
        kwargs: dict[str, object] = {"bootstrap_servers": self.bootstrap,
                                     "security_protocol": self.security_protocol}
        if self.sasl:
            kwargs.update({"sasl_mechanism": self.sasl_mechanism,
                           "sasl_plain_username": self.username,
                           "sasl_plain_password": self.password})
        if (context := self.ssl_context()) is not None:
            kwargs["ssl_context"] = context
        return kwargs

    def env(self) -> dict[str, str]:
        """The PERMBROKER_KAFKA_* variables that hand this access to a child process."""
        env = {"PERMBROKER_KAFKA_BOOTSTRAP": self.bootstrap,
               "PERMBROKER_KAFKA_SECURITY_PROTOCOL": self.security_protocol,
               "PERMBROKER_KAFKA_SASL_MECHANISM": self.sasl_mechanism,
               "PERMBROKER_KAFKA_USERNAME": self.username,
               "PERMBROKER_KAFKA_PASSWORD": self.password}
        if self.ca_file is not None:
            env["PERMBROKER_KAFKA_CA_FILE"] = str(self.ca_file)
        return env
