"""Settings from the environment (``PERMBROKER_`` prefix), a config file, and defaults.

Imports pydantic-settings, broker.errors and stdlib. Environment variables win over the config
file (``permbroker.toml``: ``PERMBROKER_CONFIG``, else ``$XDG_CONFIG_HOME/permbroker/``), whose
relative paths are resolved against the file's folder. Nothing depends on the current
directory: state lives under the XDG data dir and the default policy is the shipped bundle.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from broker.errors import ConfigError

KafkaProtocol = Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]


def _default_cache() -> Path:
    return Path.home() / ".cache" / "permbroker"


def _xdg(variable: str, fallback: str) -> Path:
    """An XDG base directory: the variable when set to an absolute path, else its default."""
    value = os.environ.get(variable, "")
    return Path(value) if value and Path(value).is_absolute() else Path.home() / fallback


def _default_stack_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "permbroker" / "stack"


def shipped_bundle(name: str = "fraud") -> Path:
    """A policy bundle shipped with permbroker: package data in an installed wheel, else the
    ``policies/`` folder of the source checkout this package runs from."""
    here = Path(__file__).resolve().parent
    packaged = here / "bundles" / name
    return packaged if packaged.is_dir() else here.parent / "policies" / name


def config_file() -> Path | None:
    """The config file: PERMBROKER_CONFIG (which must exist), else the XDG one if present."""
    explicit = os.environ.get("PERMBROKER_CONFIG", "")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"PERMBROKER_CONFIG={explicit}: no such file")
        return path.resolve()
    found = _xdg("XDG_CONFIG_HOME", ".config") / "permbroker" / "permbroker.toml"
    return found if found.is_file() else None


def _read_config(path: Path, path_fields: frozenset[str]) -> dict[str, Any]:
    """The file's settings, each relative path made relative to the file's folder."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    for name in path_fields & data.keys():
        if isinstance(data[name], str):
            data[name] = str(path.parent / Path(data[name]).expanduser())
    return data


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
    redis_cluster: bool = Field(
        False, description="The Redis at redis_url is a Redis Cluster (same as giving redis_url "
        "the redis+cluster:// scheme)"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:16379/0", description="Redis URL of the grant store, with the user "
        "to log in as (redis://worker:<password>@host:port/0; the local stack's: permbroker "
        "stack env --role <role>). It must run with maxmemory-policy noeviction (checked at "
        "start). A Redis Cluster: the scheme "
        "redis+cluster:// (or rediss+cluster://) and any node's address, or redis_cluster=true"
    )
    policy_path: Path = Field(
        default_factory=shipped_bundle,
        description="Policy bundle (file or dir) the worker loads; default: the shipped fraud "
        "bundle",
    )
    tenant_policies_dir: Path | None = Field(
        None, description="Directory of tenant policy bundles, one subdirectory per tenant "
        "(named by its tenant id); unset: one tenant, 'default', deciding under policy_path",
    )
    operator_tenants_file: Path | None = Field(
        None, description="JSON file mapping operator:<name> (or service:<name>) to the tenants "
        "it operates; an operator listed sees and acts on only those (a service listed checks "
        "only their agents), one not listed on every tenant",
    )
    app_id: str = Field(
        "permbroker", description="faust app id = Kafka consumer group of the workers (and "
        "their transactional-id prefix)"
    )
    # Local stack (permbroker stack up): where state, logs and PIDs live, and which ports.
    stack_dir: Path = Field(
        default_factory=_default_stack_dir,
        description="State dir of the local stack (data, logs, keys); default: "
        "$XDG_DATA_HOME/permbroker/stack",
    )
    cache_dir: Path = Field(
        default_factory=_default_cache,
        description="Kafka jar cache of the local stack; default: ~/.cache/permbroker",
    )
    kafka_version: str = Field("4.1.1", description="Apache Kafka version of the local stack")
    kafka_port: int = Field(19092, ge=1, le=65535, description="Local stack: Kafka client port")
    kafka_controller_port: int = Field(
        19093, ge=1, le=65535, description="Local stack: Kafka controller port")
    redis_port: int = Field(16379, ge=1, le=65535, description="Local stack: Redis port")
    kafka_jvm_options: str = Field(
        "", description="Local stack: extra JVM options of Kafka, after the stack's own (e.g. "
        "-XX:TieredStopAtLevel=1: less JIT work for a short-lived stack)")
    # Worker behaviour.
    session_timeout_s: float = Field(
        10.0, gt=0, description="Kafka group session timeout of a worker (how fast a dead "
        "worker's partitions move to another)"
    )
    expiry_interval_s: float = Field(0.5, gt=0, description="How often lapsed grants are announced")
    lane_limit: int = Field(
        64, ge=1, description="Escalations in flight per input partition (different agents "
        "concurrently, each agent's in order); 1 handles them one at a time"
    )
    record_margin_s: int = Field(
        3600, ge=0, description="Extra life of decision and revocation records beyond the grants "
        "they cover"
    )
    decision_timeout_s: float = Field(30.0, gt=0, description="SDK wait for a decision")
    # Resource services: routing, freshness, renewal warnings, HTTP API.
    grant_namespaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Scope namespaces with their own grant topic (comma-separated); "
        "unset: every namespace of the policy's ceilings; set: exactly these"
    )
    expiry_warning_s: float = Field(
        30.0, ge=0, description="grant.expiring this long before expiry (at most half the grant's "
        "life)"
    )
    view_staleness_bound_s: float = Field(
        5.0, gt=0, description="A grant view staler than this denies (fail closed)"
    )
    view_probe_interval_s: float = Field(
        0.5, gt=0, description="How often a grant view asks Kafka for the log end"
    )
    view_token_wait_s: float = Field(
        2.0, ge=0, description="How long allows(..., at_least=token) waits for the view to catch up"
    )
    enforcement_point: str = Field(
        "", description="Name this process's view acks revocations as (the API's default: "
        "permbroker-api.<host>)"
    )
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
    jwks_path: Path | None = Field(
        None, description="JWKS file the API serves at /.well-known/jwks.json until a key set "
        "is published on Kafka"
    )

    @field_validator("redis_url")
    @classmethod
    def _cluster_scheme(cls, value: str, info: ValidationInfo) -> str:
        """redis_cluster=true is carried by the URL's scheme: every client reads only the URL."""
        if info.data.get("redis_cluster") and value.startswith(("redis://", "rediss://")):
            scheme, rest = value.split("://", 1)
            return f"{scheme}+cluster://{rest}"
        return value

    @field_validator("grant_namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value
    metrics_port: int = Field(
        9464, ge=0, le=65535, description="Worker Prometheus /metrics port on 127.0.0.1 (0: off; "
        "each worker on one host needs its own)"
    )
    tracing: bool = Field(
        False, description="OpenTelemetry spans for the agent's publish, the worker's decision and "
        "the view's apply, linked through the ce_traceparent header (needs permbroker[otel])"
    )
    tracing_file: Path | None = Field(
        None, description="The worker appends its finished spans here as JSON lines (one object "
        "per span: trace_id, span_id, parent_span_id, name, attributes, start_ns, end_ns)"
    )
    # Audit (tamper-evident stream, sensitive values as HMACs).
    audit_key_dir: Path | None = Field(
        None, description="audit-hmac.key, audit-signing.key (Ed25519, PKCS#8) and "
        "audit-signing.pub; a worker without them refuses to start (default <stack_dir>/keys)"
    )
    audit_timeout_s: float = Field(
        5.0, gt=0, description="Wait for the audit write before denying a request "
        "(audit-unavailable)"
    )
    audit_redact_free_text: bool = Field(
        False, description="Store free-text reasons and details as HMACs too"
    )
    audit_sensitive_fields: str = Field(
        "", description="Extra dotted input paths stored as HMACs, comma-separated (e.g. "
        "request.signals.customer)"
    )
    audit_sealer: bool = Field(
        True, description="Run the audit sealer inside each worker (false: run permbroker "
        "sealer as its own process, as the stack, permbroker dev and compose do)"
    )
    audit_sealer_metrics_port: int = Field(
        9465, ge=0, le=65535, description="The sealer process's Prometheus /metrics port on "
        "127.0.0.1 (its lag per partition; 0: off)"
    )
    audit_seal_wait_s: float = Field(
        1.0, gt=0, le=60, description="Longest the sealer waits for raw records to fill a batch "
        "before it seals what came (one Kafka transaction per partition and batch)"
    )
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

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the config file (earlier wins)."""
        path = config_file()
        if path is None:
            return init_settings, env_settings
        paths = frozenset(name for name, f in cls.model_fields.items()
                          if f.annotation is Path or Path in get_args(f.annotation))
        return init_settings, env_settings, InitSettingsSource(settings_cls,
                                                               _read_config(path, paths))

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
