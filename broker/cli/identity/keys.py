"""`permbroker keys ...`: the broker's token keys, operators' and services' keys, and the
assertions that prove them to the HTTP API. L3 (Typer + Rich).

Imports broker (adapters, config, cli.agents's helpers).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from broker.adapters.crypto.assertions import DEFAULT_LIFE_S, mint
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import (
    AgentKeyStore,
    add_operator,
    ensure_identity_files,
    load_operator,
    new_principal_key,
)
from broker.adapters.crypto.service_key import load_service
from broker.adapters.kafka.jwks import JwksView
from broker.cli.context import cli_kafka, cli_settings
from broker.cli.identity.agents import JsonOpt, ReasonOpt, _fail, _json, _operator, _run, out
from broker.config import Settings
from broker.errors import BrokerError
from broker.policy.fields import parse_duration

keys_app = typer.Typer(help="The broker's token keys and this operator's key.",
                       no_args_is_help=True)


@keys_app.command("init")
def keys_init(as_json: JsonOpt = False) -> None:
    """Create the broker's keyring, its trust anchor and this operator's key if missing (0600)."""
    settings = cli_settings()
    created = ensure_identity_files(settings)
    paths = {name: str(settings.key_path(name))
             for name in ("broker", "operator", "operators", "trust-anchor", "services")}
    if as_json:
        _json({"created": created, **paths})
        return
    for name, path in paths.items():
        out.print(f"{name:<13} {path}{'  (created)' if path in created else ''}")


@keys_app.command("rotate")
def keys_rotate(
    overlap: Annotated[str | None, typer.Option(
        help="How long the old key still verifies (default PERMBROKER_BROKER_KEY_OVERLAP_S)."
    )] = None,
    reason: ReasonOpt = "scheduled rotation",
) -> None:
    """Rotate the broker's token-signing key (workers pick it up without a restart)."""
    seconds = parse_duration(overlap) if overlap is not None else None
    if overlap is not None and seconds is None and overlap != "0":
        raise _fail(f"--overlap {overlap!r} is not a duration", "use e.g. 0, 90s, 2m")
    with _operator(cli_settings()) as op:
        answer = _run(lambda: op.rotate_broker_key(overlap_s=seconds if overlap != "0" else 0,
                                                   reason=reason))
    out.print(f"[green]rotated[/]: {escape(answer.reason)}")


@keys_app.command("jwks")
def keys_jwks() -> None:
    """The published JWKS (what resource services verify grant tokens with), as JSON."""
    settings = cli_settings()
    try:
        with JwksView.from_settings(settings, cli_kafka()) as view:  # keys the chain accepts
            _json(view.document())
    except BrokerError as exc:
        raise _fail(exc, "is Kafka up? permbroker stack status") from exc


KeyFileOpt = Annotated[Path, typer.Option(
    help="Where the new private key is written (0600); hand it to that operator.")]


@keys_app.command("add-operator")
def keys_add_operator(name: str, key_file: KeyFileOpt) -> None:
    """Create a key for operator NAME in KEY_FILE and trust it (operators.json): every
    operator signs with a key of their own, and the audit names them by it."""
    settings = cli_settings()
    try:
        key = new_principal_key(key_file, f"operator:{name}")
        add_operator(settings.key_path("operators"), f"operator:{name}", key.jwk)
    except BrokerError as exc:
        raise _fail(exc) from exc
    out.print(f"operator:{name} (key {key.kid}) trusted; its key is in {key_file}")


@keys_app.command("assertion")
def keys_assertion(
    method: str, path: str,
    agent: Annotated[str | None, typer.Option(help="Sign as this agent (its key store).")] = None,
    service: Annotated[str | None, typer.Option(
        help="Sign as this resource service (its key from `permbroker services keygen`).")
    ] = None,
    ttl: Annotated[int, typer.Option(help="Seconds it lives (the API accepts up to "
                                          "PERMBROKER_API_ASSERTION_MAX_LIFE_S).")
                   ] = DEFAULT_LIFE_S,
) -> None:
    """Print an assertion for one HTTP call (default: as this operator), for
    ``curl -H "Authorization: Bearer $(permbroker keys assertion GET /v1/operator/revocations)"``.
    """
    try:
        principal, key = _signer(cli_settings(), agent, service)
    except BrokerError as exc:
        raise _fail(exc, "permbroker keys init creates the operator key; "
                    "permbroker services keygen a service's") from exc
    sys.stdout.write(mint(key, principal, method, path, ttl_s=ttl) + "\n")


def _signer(settings: Settings, agent: str | None,
            service: str | None) -> tuple[str, SigningKey]:
    if agent is not None:
        return agent, AgentKeyStore.from_settings(settings).load(agent).current
    if service is not None:
        identity = load_service(settings, service)
        return identity.principal, identity.key
    return load_operator(settings.key_path("operator"))
