"""`permbroker services ...`: enforcement points as identities (their keys). L3 (Typer + Rich).

Imports broker (adapters, config, cli helpers). ``keygen`` creates a point's private key on the
machine it runs on (0600); ``register`` lists its public key in the services file (0600), which
is what makes its revocation acks and usage reports count; ``list`` shows who is registered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from broker.adapters.crypto.service_key import (
    create_service,
    load_service,
    register_service,
    service_key_path,
)
from broker.adapters.crypto.trust import ServiceDirectory
from broker.cli.context import cli_settings
from broker.cli.identity.agents import JsonOpt, _fail, _json, out
from broker.errors import BrokerError
from schemas.events import PublicJwk

services_app = typer.Typer(help="Enforcement points (resource services) and their keys.",
                           no_args_is_help=True)
NameArg = Annotated[str, typer.Argument(help="The enforcement point's name (as it acks).")]


@services_app.command("keygen")
def services_keygen(name: NameArg, as_json: JsonOpt = False) -> None:
    """Create an enforcement point's private key here (0600); prints its public key."""
    settings = cli_settings()
    try:
        identity = create_service(settings, name)
    except BrokerError as exc:
        raise _fail(exc, f"permbroker services register {name}") from exc
    path = service_key_path(settings, name)
    if as_json:
        _json({"name": name, "key_file": str(path),
               "public_key": identity.key.jwk.model_dump(mode="json", exclude_none=True)})
        return
    out.print(f"key of {identity.principal} in {path} (kid {identity.key.kid}); register it: "
              f"permbroker services register {name}")


@services_app.command("register")
def services_register(
    name: NameArg,
    public_key: Annotated[Path | None, typer.Option(
        help="A JSON file with the point's public JWK (default: its key file here).")] = None,
) -> None:
    """Trust an enforcement point's key: its acks and usage reports count from now on."""
    settings = cli_settings()
    try:
        jwk = PublicJwk.model_validate(json.loads(public_key.read_text("utf-8"))) \
            if public_key is not None else load_service(settings, name).key.jwk
        register_service(settings, name, jwk)
    except (BrokerError, OSError, ValueError) as exc:
        raise _fail(f"cannot register {name}: {exc}", "permbroker services keygen") from exc
    out.print(f"registered service:{name} (kid {jwk.kid}) in {settings.key_path('services')}")


@services_app.command("list")
def services_list(as_json: JsonOpt = False) -> None:
    """The enforcement points whose signatures count (from the services file)."""
    settings = cli_settings()
    try:
        keys = ServiceDirectory(settings.key_path("services")).keys()
    except BrokerError as exc:
        raise _fail(exc, "permbroker services register <name>") from exc
    rows = [{"principal": p, "kid": kid} for kid, (p, _jwk) in sorted(keys.items())]
    if as_json:
        _json(rows)
        return
    for row in rows:
        out.print(f"{row['principal']:<40} {row['kid']}")
    if not rows:
        out.print("no enforcement point registered")
