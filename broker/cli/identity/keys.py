"""`permbroker keys ...`: the broker's token keys and this operator's key. L3 (Typer + Rich).

Imports broker (adapters, config, cli.agents's helpers).
"""

from __future__ import annotations

from typing import Annotated

import typer

from broker.adapters.crypto.keystore import ensure_identity_files
from broker.adapters.kafka.jwks import JwksView
from broker.cli.context import cli_kafka, cli_settings
from broker.cli.identity.agents import JsonOpt, ReasonOpt, _fail, _json, _operator, _run, out
from broker.errors import BrokerError
from broker.policy.fields import parse_duration

keys_app = typer.Typer(help="The broker's token keys and this operator's key.",
                       no_args_is_help=True)


@keys_app.command("init")
def keys_init(as_json: JsonOpt = False) -> None:
    """Create the broker's token keyring and this operator's key if missing (0600 files)."""
    settings = cli_settings()
    created = ensure_identity_files(settings)
    paths = {name: str(settings.key_path(name)) for name in ("broker", "operator", "operators")}
    if as_json:
        _json({"created": created, **paths})
        return
    for name, path in paths.items():
        out.print(f"{name:<9} {path}{'  (created)' if path in created else ''}")


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
    out.print(f"[green]rotated[/]: {answer.reason}")


@keys_app.command("jwks")
def keys_jwks() -> None:
    """The published JWKS (what resource services verify grant tokens with), as JSON."""
    settings = cli_settings()
    try:
        with JwksView(cli_kafka(), issuer=settings.token_issuer) as view:
            view.wait_ready(30)
            _json(view.document())
    except BrokerError as exc:
        raise _fail(str(exc), "is Kafka up? permbroker stack status") from exc
