"""Private key files: the broker's keyring, an operator's key, agents' keys. Imports stdlib, jose.

Also imports schemas, config, errors and broker.identity.tenants (the operator tenants file).
Every private key lives in one JSON file at an explicit path (``Settings.key_path``), written
atomically with mode 0600 in a 0700 directory; a file readable by group or others is refused
with the ``chmod`` that fixes it. Nothing here logs or returns key material except to the code
that signs with it.

    <stack_dir>/keys/broker.json      the broker's grant-token keyring (kid rotation, overlap)
    <stack_dir>/keys/operator.json    this operator's key (principal operator:<name>)
    <stack_dir>/keys/operators.json   public JWKS of every operator the workers trust
    <stack_dir>/keys/trust-anchor.json the broker's first public keys (readers' chain of trust)
    <stack_dir>/keys/agents/<id>.json an agent's own keys (current, and the one it replaces)
"""

from __future__ import annotations

import getpass
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.adapters.crypto.directory import (
    KeyDirectory,
    Principals,
    add_principal,
    load_principals,
    write_anchor,
)
from broker.adapters.crypto.jose import SigningKey
from broker.config import Settings
from broker.errors import IdentityError, KeyFileError
from broker.identity.tenants import operator_scopes
from schemas.events import AGENT_ID_PATTERN, PublicJwk
from schemas.signing import OPERATOR_PREFIX


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write a key file atomically, mode 0600, in a directory only its owner can list."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def read_private(path: Path, what: str) -> dict[str, Any]:
    """Read a key file; refuse one that is missing, unreadable or open to group/others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {path}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{what} {path} is readable by others (mode {oct(mode & 0o777)}); "
                           f"run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read {what} {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{what} {path} is not a JSON object")
    return data


OPERATORS_FILE = "operators file"


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


# --- operators -----------------------------------------------------------------

def operator_name() -> str:
    """The default operator principal: ``operator:<login name>``."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    return OPERATOR_PREFIX + (re.sub(r"[^A-Za-z0-9._@-]", "-", user) or "operator")


def _load_key(path: Path, prefix: str, what: str) -> tuple[str, SigningKey]:
    data = read_private(path, what)
    principal = data.get("principal")
    if not isinstance(principal, str) or not principal.startswith(prefix):
        raise KeyFileError(f"{what} {path} names no principal {prefix}<name>")
    return principal, SigningKey.from_pem(str(data.get("private_key_pem", "")))


def load_operator(path: Path) -> tuple[str, SigningKey]:
    """The operator principal and key in ``path`` (the CLI signs operator commands with it)."""
    return _load_key(path, OPERATOR_PREFIX, "operator key")


def load_operators(path: Path) -> Principals:
    """kid -> (principal, public key) of every trusted operator (a JWKS with ``principal``)."""
    return load_principals(path, OPERATOR_PREFIX, OPERATORS_FILE)


class OperatorDirectory(KeyDirectory):
    """The trusted operators' keys from the operators file, re-read when it changes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, OPERATOR_PREFIX, OPERATORS_FILE)


def add_operator(path: Path, principal: str, jwk: PublicJwk) -> None:
    """Trust an operator key (the file holds no secret, but is written 0600: it decides trust)."""
    if not principal.startswith(OPERATOR_PREFIX):
        raise KeyFileError(f"an operator principal is {OPERATOR_PREFIX}<name>, not {principal!r}")
    add_principal(path, principal, jwk, OPERATORS_FILE)


def load_operator_scopes(path: Path | None) -> dict[str, frozenset[str]]:
    """The operators scoped to tenants (none without a file); KeyFileError if it is invalid."""
    if path is None:
        return {}
    try:
        return operator_scopes(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"operator tenants file {path}: {exc}") from exc


def new_principal_key(path: Path, principal: str) -> SigningKey:
    """Generate a key for ``principal`` into ``path`` (0600); refuses to overwrite one."""
    if path.exists():
        raise KeyFileError(f"{path} exists already; delete it first to replace the key it holds")
    key = SigningKey.generate()
    write_private(path, {"principal": principal, "private_key_pem": key.to_pem()})
    return key


# --- agents ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AgentKeys:
    """An agent's private keys: the one it signs with, the one a rotation replaced (kept for the
    overlap), and a new one announced but not yet accepted."""

    agent_id: str
    current: SigningKey
    previous: SigningKey | None = None
    created_at: datetime | None = None
    pending: SigningKey | None = None


class AgentKeyStore:
    """One file per agent under ``directory``; only the agent's own process should read it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentKeyStore:
        """The store at ``PERMBROKER_AGENT_KEY_DIR`` (default <stack_dir>/keys/agents)."""
        return cls(settings.key_path("agents"))

    def path(self, agent_id: str) -> Path:
        """The key file of one agent."""
        if re.fullmatch(AGENT_ID_PATTERN, agent_id) is None:
            raise IdentityError(f"not an agent id: {agent_id!r}")
        return self.directory / f"{agent_id}.json"

    def exists(self, agent_id: str) -> bool:
        """Whether this agent has a key file here."""
        return self.path(agent_id).exists()

    def load(self, agent_id: str) -> AgentKeys:
        """The agent's keys; KeyFileError saying how to create one when there is none."""
        path = self.path(agent_id)
        if not path.exists():
            raise KeyFileError(f"no key for agent {agent_id} in {self.directory}: create one with "
                               f"`permbroker agents keygen --agent {agent_id}` and have an "
                               "operator register its public key")
        data = read_private(path, f"key file of agent {agent_id}")
        previous, pending = data.get("previous_pem"), data.get("pending_pem")
        return AgentKeys(agent_id, SigningKey.from_pem(str(data.get("current_pem", ""))),
                         SigningKey.from_pem(previous) if isinstance(previous, str) else None,
                         _time(data.get("created_at")),
                         SigningKey.from_pem(pending) if isinstance(pending, str) else None)

    def save(self, keys: AgentKeys) -> None:
        """Write the agent's keys (atomically, 0600)."""
        data: dict[str, Any] = {
            "agent_id": keys.agent_id, "current_kid": keys.current.kid,
            "current_pem": keys.current.to_pem(),
            "created_at": (keys.created_at or datetime.now(UTC)).isoformat()}
        if keys.previous is not None:
            data |= {"previous_kid": keys.previous.kid, "previous_pem": keys.previous.to_pem()}
        if keys.pending is not None:
            data |= {"pending_kid": keys.pending.kid, "pending_pem": keys.pending.to_pem()}
        write_private(self.path(keys.agent_id), data)

    def generate(self, agent_id: str, *, alg: str = "EdDSA") -> AgentKeys:
        """A new key pair for the agent, stored here; refuses to overwrite an existing key."""
        if self.exists(agent_id):
            raise KeyFileError(f"agent {agent_id} already has a key at {self.path(agent_id)}; "
                               "rotate it instead (AgentClient.rotate_key)")
        keys = AgentKeys(agent_id, SigningKey.generate("ES256" if alg == "ES256" else "EdDSA"),
                         created_at=datetime.now(UTC))
        self.save(keys)
        return keys


# --- the broker's keyring ---------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerKey:
    """One token-signing key of the broker and its life: signs from activate_at, verifies
    until retire_at (None: not retiring)."""

    key: SigningKey
    created_at: datetime
    activate_at: datetime
    retire_at: datetime | None = None
    cause: str = ""  # the rotation command that added it (a redelivery adds nothing)

    def to_json(self) -> dict[str, Any]:
        """This key as it is stored in the keyring file."""
        return {"kid": self.key.kid, "alg": self.key.alg, "private_key_pem": self.key.to_pem(),
                "created_at": self.created_at.isoformat(),
                "activate_at": self.activate_at.isoformat(),
                "retire_at": self.retire_at.isoformat() if self.retire_at else None,
                "cause": self.cause}


def read_keyring(path: Path) -> tuple[str, list[BrokerKey]]:
    """The issuer and keys of a keyring file."""
    data = read_private(path, "broker keyring")
    keys = []
    for item in data.get("keys", []):
        created = _time(item.get("created_at")) or datetime.now(UTC)
        keys.append(BrokerKey(SigningKey.from_pem(str(item.get("private_key_pem", ""))), created,
                              _time(item.get("activate_at")) or created,
                              _time(item.get("retire_at")), str(item.get("cause", ""))))
    return str(data.get("issuer", "permbroker")), keys


def write_keyring(path: Path, issuer: str, keys: list[BrokerKey]) -> None:
    """Replace the keyring file (atomically, 0600)."""
    write_private(path, {"issuer": issuer, "keys": [k.to_json() for k in keys]})


def rotated(keys: list[BrokerKey], now: datetime, *, overlap_s: int, lead_s: float,
            cause: str = "") -> list[BrokerKey]:
    """Add a key that signs from now + lead; the keys it replaces verify for ``overlap_s`` more.

    The lead lets verifiers learn the new key from the JWKS before any token carries it; the
    overlap keeps tokens signed just before the rotation verifiable until they expire.
    """
    if cause and any(k.cause == cause for k in keys):
        return keys  # this rotation already happened (a redelivered or retried command)
    activate = now + timedelta(seconds=lead_s)
    retire = activate + timedelta(seconds=overlap_s)
    kept = [k if k.retire_at is not None
            else BrokerKey(k.key, k.created_at, k.activate_at, retire, k.cause)
            for k in keys if k.retire_at is None or k.retire_at > now]
    return [*kept, BrokerKey(SigningKey.generate(), now, activate, cause=cause)]


# --- first start --------------------------------------------------------------------------------

def ensure_identity_files(settings: Settings) -> list[str]:
    """Create the broker keyring, its trust anchor and an operator key if missing; make sure the
    workers trust that operator key (its public half in the operators file)."""
    created = []
    broker = settings.key_path("broker")
    if not broker.exists():
        now = datetime.now(UTC)
        write_keyring(broker, settings.token_issuer, [BrokerKey(SigningKey.generate(), now, now)])
        created.append(str(broker))
    anchor = settings.key_path("trust-anchor")
    if not anchor.exists():  # pinned once: later keys reach readers through the chain
        issuer, keys = read_keyring(broker)
        write_anchor(anchor, issuer, tuple(k.key.jwk for k in keys if k.retire_at is None))
        created.append(str(anchor))
    operator, operators = settings.key_path("operator"), settings.key_path("operators")
    if not operator.exists():
        key, principal = SigningKey.generate(), operator_name()
        write_private(operator, {"principal": principal, "private_key_pem": key.to_pem()})
        created.append(str(operator))
    principal, key = load_operator(operator)
    if not operators.exists() or key.kid not in load_operators(operators):
        add_operator(operators, principal, key.jwk)
    return created
