"""A worker as a child process (``python -m streams``), for the demo, tests and benchmarks.

Imports config and the Kafka access.

Starts it with settings and its Kafka access (the worker role's user) passed through the
environment, waits until it has its partitions and its grant view is ready, and stops (SIGTERM)
or kills (SIGKILL) exactly that process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from broker.adapters.kafka.access import KafkaAccess
from broker.config import Settings
from broker.errors import BrokerError
from broker.stack.credentials import redis_of

ROOT = Path(__file__).resolve().parents[2]
READY_MARKERS = ("worker ready", "Setting newly assigned partitions")


_KAFKA_VARS = ("PERMBROKER_KAFKA_BOOTSTRAP", "PERMBROKER_KAFKA_SECURITY_PROTOCOL",
               "PERMBROKER_KAFKA_SASL_MECHANISM", "PERMBROKER_KAFKA_USERNAME",
               "PERMBROKER_KAFKA_PASSWORD", "PERMBROKER_KAFKA_CA_FILE")


def worker_env(settings: Settings, kafka: KafkaAccess) -> dict[str, str]:
    """The environment that hands ``settings`` and ``kafka`` to a child (worker or CLI)."""
    inherited = {k: v for k, v in os.environ.items() if k not in _KAFKA_VARS}
    return {
        **inherited,
        **kafka.env(),
        "PERMBROKER_REDIS_URL": redis_of(settings.redis_url, kafka),
        "PERMBROKER_POLICY_PATH": str(settings.policy_path),
        "PERMBROKER_STACK_DIR": str(settings.stack_dir),
        "PERMBROKER_APP_ID": settings.app_id,
        "PERMBROKER_EXPIRY_INTERVAL_S": str(settings.expiry_interval_s),
        "PERMBROKER_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
        "PERMBROKER_GRANT_NAMESPACES": ",".join(settings.grant_namespaces),
        "PERMBROKER_EXPIRY_WARNING_S": str(settings.expiry_warning_s),
        "PERMBROKER_METRICS_PORT": str(settings.metrics_port),
        "PERMBROKER_RECORD_MARGIN_S": str(settings.record_margin_s),
        "PERMBROKER_TRACING": str(settings.tracing).lower(),
        **({"PERMBROKER_TRACING_FILE": str(settings.tracing_file)} if settings.tracing_file
           else {}),
        **_audit_env(settings),
        **_identity_env(settings),
        **{f"PERMBROKER_{name.upper()}": str(getattr(settings, name))
           for name in ("tenant_policies_dir", "operator_tenants_file")
           if getattr(settings, name) is not None},
    }


def _audit_env(settings: Settings) -> dict[str, str]:
    """The audit settings (keys, redaction, sealer) as environment variables."""
    names = {name for name in Settings.model_fields if name.startswith("audit_")}
    values = settings.model_dump(include=names)
    return {f"PERMBROKER_{k.upper()}": str(v) for k, v in values.items() if v is not None}


_IDENTITY_SETTINGS = ("allow_unsigned", "signature_max_age_s", "signature_max_skew_s",
                      "token_issuer", "token_max_ttl_s", "broker_key_overlap_s",
                      "agent_key_overlap_s")
_KEY_FILES = {"broker": "BROKER_KEY_FILE", "operator": "OPERATOR_KEY_FILE",
              "operators": "OPERATORS_FILE", "agents": "AGENT_KEY_DIR",
              "trust-anchor": "TRUST_ANCHOR", "services": "SERVICES_FILE",
              "service-keys": "SERVICE_KEY_DIR"}


def _identity_env(settings: Settings) -> dict[str, str]:
    """The identity settings (key file paths, signature window, dev mode) for the child."""
    env = {}
    for name in _IDENTITY_SETTINGS:
        value = getattr(settings, name)
        env[f"PERMBROKER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) \
            else str(value)
    for name, var in _KEY_FILES.items():
        env[f"PERMBROKER_{var}"] = str(settings.key_path(name))
    return env


class WorkerProcess:
    """One ``python -m streams`` child with its log file."""

    ready_markers: tuple[str, ...] = READY_MARKERS  # all in its log: ready

    def __init__(self, settings: Settings, kafka: KafkaAccess, *, name: str = "worker",
                 loglevel: str = "info") -> None:
        self.settings = settings
        self.kafka = kafka
        self.log_path = settings.stack_dir / f"{name}.log"
        self._loglevel = loglevel
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int | None:
        """PID of the running child, if any."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the child (appending to its log)."""
        self.settings.stack_dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                self.argv(),
                env=worker_env(self.settings, self.kafka),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    def argv(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "streams", self._loglevel]

    def log_text(self) -> str:
        """What this run of the child has logged so far."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as f:
            f.seek(self._log_offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the worker has partitions and a built view; raise if it dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise BrokerError(f"{self.log_path.stem} exited early; see {self.log_path}")
            text = self.log_text()
            if all(marker in text for marker in self.ready_markers):
                return
            time.sleep(0.05)
        raise BrokerError(f"{self.log_path.stem} not ready within {timeout:.0f}s; "
                          f"see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the crash case (no flush, no commit)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
