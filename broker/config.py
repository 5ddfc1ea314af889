"""Settings from the environment (``PERMBROKER_`` prefix) and defaults.

Imports pydantic-settings and stdlib.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

KafkaProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


def _default_cache() -> Path:
    return Path.home() / ".cache" / "permbroker"


class Settings(BaseSettings):
    """Every knob permbroker reads; each can be set as PERMBROKER_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="PERMBROKER_", frozen=True)

    kafka_bootstrap: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    # Who this process is on Kafka (a SCRAM user of one role) and how it connects.
    kafka_security_protocol: KafkaProtocol | None = Field(
        None, description="PLAINTEXT, SASL_PLAINTEXT or SASL_SSL (default: SASL_PLAINTEXT when "
        "a username is set, else PLAINTEXT)"
    )
    kafka_sasl_mechanism: SaslMechanism = Field("SCRAM-SHA-512", description="SASL mechanism")
    kafka_username: str = Field("", description="SASL user (the role: worker, agent, ...)")
    kafka_password: SecretStr | None = Field(None, description="SASL password of that user")
    kafka_ca_file: Path | None = Field(
        None, description="PEM CA certificate(s) that sign the brokers' certificates (SASL_SSL)"
    )
    kafka_credentials_file: Path | None = Field(
        None, description="Dev tooling only: the local stack's Kafka users, one password per "
        "role, handed to the processes it starts (default <stack_dir>/kafka/credentials.json)"
    )
    redis_url: str = Field("redis://127.0.0.1:16379/0", description="Redis URL of the grant store")
    policy_path: Path = Field(Path("policies/fraud"), description="Policy bundle (file or dir)")
    app_id: str = Field("permbroker", description="faust app id = Kafka consumer group")
    # Local stack (permbroker stack up): where state, logs and PIDs live, and which ports.
    stack_dir: Path = Field(Path(".stack"), description="State dir of the local stack")
    cache_dir: Path = Field(default_factory=_default_cache, description="Kafka jar cache")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version of the local stack")
    kafka_port: int = Field(19092, ge=1, le=65535, description="Kafka port of the local stack")
    kafka_controller_port: int = Field(
        19093, ge=1, le=65535, description="KRaft controller port of the local stack")
    redis_port: int = Field(16379, ge=1, le=65535, description="Redis port of the local stack")
    # Worker behaviour.
    session_timeout_s: float = Field(
        10.0, gt=0, description="Kafka group session timeout of a worker")
    expiry_interval_s: float = Field(0.5, gt=0, description="How often lapsed grants are announced")
    lane_limit: int = Field(
        64, ge=1, description="Escalations in flight per input partition (different agents "
        "concurrently, each agent's in order); 1 handles them one at a time"
    )
    record_margin_s: int = Field(
        3600, ge=0, description="Extra life of decision/revocation markers")
    decision_timeout_s: float = Field(30.0, gt=0, description="SDK wait for a decision")
    # Resource services: routing, freshness, renewal warnings, HTTP API.
    grant_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Scope namespaces with their own grant topic (comma-separated)"
    )
    expiry_warning_s: float = Field(
        30.0, ge=0, description="grant.expiring this long before expiry")
    view_staleness_bound_s: float = Field(
        5.0, gt=0, description="A grant view staler than this denies (fail closed)"
    )
    view_probe_interval_s: float = Field(
        0.5, gt=0, description="How often a grant view asks Kafka for the log end"
    )
    view_token_wait_s: float = Field(
        2.0, ge=0, description="How long allows(..., at_least=token) waits for the view to catch up"
    )
    enforcement_point: str = Field("", description="Name this process's view acks revocations as")
    api_host: str = Field("127.0.0.1", description="permbroker api: listen address")
    api_port: int = Field(8080, ge=0, le=65535, description="permbroker api: listen port")
    api_assertion_max_life_s: int = Field(
        120, ge=1, le=3600, description="Longest life (exp - iat) of an API assertion"
    )
    api_max_body_bytes: int = Field(
        65536, ge=1024, description="Largest request body the API reads (larger: 413)"
    )
    api_rate_limit: int = Field(
        50, ge=1, description="Requests per credential per api_rate_window_s (more: 429)"
    )
    api_rate_window_s: int = Field(1, ge=1, description="The window of api_rate_limit, seconds")
    metrics_history: int = Field(
        10_000, ge=1, description="Revocations, acks and propagation times the API's metrics "
        "remember (the oldest are forgotten first)"
    )
    decisions_kept: int = Field(
        10_000, ge=1, description="Answers a decision (or audit) watcher keeps for callers that "
        "have not asked yet (the oldest are dropped first)"
    )
    jwks_path: Path | None = Field(None, description="JWKS file served at /.well-known/jwks.json")

    @field_validator("grant_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
    metrics_port: int = Field(0, ge=0, le=65535, description="Worker /metrics port (0: off)")
    # Audit (tamper-evident stream, sensitive values as HMACs).
    audit_key_dir: Path | None = Field(
        None, description="HMAC and signing keys of the audit (default <stack_dir>/keys)"
    )
    audit_timeout_s: float = Field(
        5.0, gt=0, description="Wait for the audit write before failing a request closed"
    )
    audit_redact_free_text: bool = Field(
        False, description="Store free-text reasons and details as HMACs too"
    )
    audit_sensitive_fields: str = Field(
        "", description="Extra dotted input paths stored as HMACs (comma-separated)"
    )
    audit_sealer: bool = Field(True, description="Run the audit sealer inside the worker")
    audit_digest_interval_s: float = Field(
        2.0, gt=0, description="Seconds between signed digests of a partition with new entries"
    )
    audit_digest_every: int = Field(
        500, ge=1, description="Entries after which a digest is due anyway")
    # Identity (agent keys, signed events, grant tokens). Key files hold private keys: they are
    # created with mode 0600 under <stack_dir>/keys unless a path is given, never logged.
    allow_unsigned: bool = Field(
        False, description="DEV ONLY: accept events without a signature from registered agents"
    )
    signature_max_age_s: int = Field(
        300, gt=0, description="An event's iat may be at most this old when Kafka appends it"
    )
    signature_max_skew_s: int = Field(30, ge=0, description="An event's iat may be this far ahead")
    broker_key_file: Path | None = Field(
        None, description="The broker's token keyring (default <stack_dir>/keys/broker.json)"
    )
    operator_key_file: Path | None = Field(
        None, description="This operator's private key (default <stack_dir>/keys/operator.json)"
    )
    operators_file: Path | None = Field(
        None, description="Operators' public keys, a JWKS (default <stack_dir>/keys/operators.json)"
    )
    agent_key_dir: Path | None = Field(
        None, description="Where agents keep their private keys (default <stack_dir>/keys/agents)"
    )
    trust_anchor: Path | None = Field(
        None, description="The broker's pinned public keys every reader verifies records from "
        "(default <stack_dir>/keys/trust-anchor.json)"
    )
    services_file: Path | None = Field(
        None, description="Resource services' (enforcement points', the API's) public keys, a "
        "JWKS (default "
        "<stack_dir>/keys/services.json)"
    )
    service_key_dir: Path | None = Field(
        None, description="Where enforcement points keep their private keys (default "
        "<stack_dir>/keys/services)"
    )
    view_max_entries: int = Field(
        100_000, ge=1, description="Ended grant ids (and unreadable agents) a grant view remembers"
    )
    token_issuer: str = Field("permbroker", description="`iss` of grant tokens")
    token_max_ttl_s: int = Field(60, gt=0, description="Longest life of a grant token")
    token_leeway_s: int = Field(5, ge=0, description="Clock leeway of token verifiers")
    broker_key_overlap_s: int = Field(
        120, ge=0,
        description="How long a replaced broker key still verifies (>= token life + leeway)"
    )
    agent_key_overlap_s: int = Field(
        300, ge=0, description="How long an agent's replaced key still signs after a rotation"
    )
    agent_key_max_age_s: int = Field(
        30 * 86400, gt=0, description="Inventory flags agents whose newest key is older than this"
    )

    def key_path(self, name: str) -> Path:
        """Where a key file lives: the explicit setting, else <stack_dir>/keys/<default>."""
        explicit = {"broker": self.broker_key_file, "operator": self.operator_key_file,
                    "operators": self.operators_file, "agents": self.agent_key_dir,
                    "trust-anchor": self.trust_anchor, "services": self.services_file,
                    "service-keys": self.service_key_dir}[name]
        default = {"broker": "broker.json", "operator": "operator.json",
                   "operators": "operators.json", "agents": "agents",
                   "trust-anchor": "trust-anchor.json", "services": "services.json",
                   "service-keys": "services"}[name]
        return explicit if explicit is not None else self.stack_dir / "keys" / default
