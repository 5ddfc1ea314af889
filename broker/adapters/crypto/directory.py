"""Public-key files: trusted operators, enforcement points, the trust anchor. Imports stdlib.

Also imports schemas, broker.errors. Each file is a JWKS of public keys (``{"keys": [...]}``);
in the operators and services files each key names its principal (``operator:<name>``,
``service:<name>``); the trust anchor pins the broker's first keys (``{"issuer", "keys"}``).
Nothing here is secret, but whoever can write one of these files decides whom the broker and
its readers trust: each is written atomically with mode 0600 and refused, naming the file and
its mode, when its group or others may write it.

    <stack_dir>/keys/operators.json      operators whose commands the workers accept
    <stack_dir>/keys/services.json       enforcement points whose acks and usage reports count
    <stack_dir>/keys/trust-anchor.json   the broker keys every reader starts its chain from
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker.errors import KeyFileError
from schemas.events import PublicJwk

Principals = dict[str, tuple[str, PublicJwk]]  # kid -> (principal, public key)


def write_public(path: Path, data: dict[str, Any]) -> None:
    """Write a public-key file atomically with mode 0600, in a directory only its owner lists."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_public(path: Path, what: str, hint: str = "run `permbroker keys init`") -> dict[str, Any]:
    """A public-key file as JSON; refused when missing, unreadable or writable by others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"no {what} at {path}: {hint}") from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KeyFileError(f"{what} {path} is writable by others (mode {oct(mode & 0o777)}): "
                           f"anyone who can write it chooses whom to trust; run: chmod 600 {path}")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{what} {path} is not a JSON object")
    return data


def _jwks(path: Path, what: str, items: object) -> list[tuple[str, PublicJwk]]:
    """(principal, key) of every key listed (the principal '' when the file names none)."""
    out = []
    for item in items if isinstance(items, list) else []:
        entry = dict(item) if isinstance(item, dict) else {}
        principal = str(entry.pop("principal", ""))
        try:
            jwk = PublicJwk.model_validate(entry)
        except ValidationError as exc:
            raise KeyFileError(f"bad key in {what} {path}: {exc.errors()[0]['msg']}") from None
        out.append((principal, jwk))
    return out


def load_principals(path: Path, prefix: str, what: str) -> Principals:
    """kid -> (principal, key) of every key of a principals file whose principal has ``prefix``."""
    keys = _jwks(path, what, read_public(path, what).get("keys"))
    return {jwk.kid: (p, jwk) for p, jwk in keys if jwk.kid and p.startswith(prefix)}


def add_principal(path: Path, principal: str, jwk: PublicJwk, what: str) -> None:
    """Trust one more key for ``principal`` (a key with the same kid is replaced)."""
    keys = read_public(path, what).get("keys", []) if path.exists() else []
    kept = [k for k in keys if isinstance(k, dict) and k.get("kid") != jwk.kid]
    kept.append({**jwk.model_dump(mode="json", exclude_none=True), "principal": principal})
    write_public(path, {"keys": kept})


class KeyDirectory:
    """The keys of one principals file, re-read when it changes (a missing file trusts no one).

    Whether it changed is checked at most every ``RECHECK_S`` on a lookup, and at once for a key
    id it does not hold (a key added a moment ago): a key removed from the file stops being
    trusted within ``RECHECK_S``, without a file system call on every lookup.
    """

    RECHECK_S = 1.0

    def __init__(self, path: Path, prefix: str, what: str) -> None:
        self.path = path
        self.prefix = prefix
        self.what = what
        self._stamp: int | None = None
        self._checked = 0.0
        self._keys: Principals = {}
        self.reload()

    def reload(self) -> None:
        """Re-read the file if it changed."""
        self._checked = time.monotonic()
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            self._keys, self._stamp = {}, None
            return
        if stamp != self._stamp:
            self._keys = load_principals(self.path, self.prefix, self.what)
            self._stamp = stamp

    def held(self, kid: str) -> tuple[str, PublicJwk] | None:
        """(principal, key) of a key id among the keys held (re-read if due), or None."""
        if time.monotonic() - self._checked >= self.RECHECK_S:
            self.reload()
        return self._keys.get(kid)

    def get(self, kid: str) -> tuple[str, PublicJwk] | None:
        """(principal, key) of a key id, re-reading the file if it is not held."""
        found = self.held(kid)
        if found is None:
            self.reload()
            found = self._keys.get(kid)
        return found

    def keys(self) -> Principals:
        """Every trusted key, by kid."""
        return dict(self._keys)


# --- the trust anchor ---------------------------------------------------------------------------

def write_anchor(path: Path, issuer: str, keys: tuple[PublicJwk, ...]) -> None:
    """Pin ``keys`` as the broker's trust anchor (what every reader starts its chain from)."""
    write_public(path, {"issuer": issuer,
                        "keys": [k.model_dump(mode="json", exclude_none=True) for k in keys]})


def read_anchor(path: Path) -> tuple[str, tuple[PublicJwk, ...]]:
    """The issuer and keys of a trust anchor file (KeyFileError, saying how, when missing)."""
    data = read_public(path, "trust anchor")
    keys = tuple(jwk for _p, jwk in _jwks(path, "trust anchor", data.get("keys")) if jwk.kid)
    if not keys:
        raise KeyFileError(f"trust anchor {path} names no key")
    return str(data.get("issuer", "permbroker")), keys
