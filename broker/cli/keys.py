"""`permbroker keys ...` and `permbroker inventory`: broker keys, the agent inventory. L3.

Imports broker (adapters, sdk, policy, config, cli_identity's helpers) and schemas. The inventory
joins the registry (Kafka, the record), what agents hold now (Redis), when they last acted
(Redis) and their baselines (the policy), and flags what needs attention.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.adapters.crypto.keystore import ensure_identity_files
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import read_registry
from broker.adapters.redis.identity import IdentityStore
from broker.adapters.redis.store import RedisGrantStore
from broker.cli.agents import JsonOpt, ReasonOpt, _ago, _fail, _json, _operator, _run, out
from broker.cli.context import cli_settings
from broker.config import Settings
from broker.errors import BrokerError, PolicyError
from broker.identity.inventory import InventoryRow, inventory_rows
from broker.policy import load_policy
from broker.policy.fields import parse_duration
from schemas.events import AgentRecord

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
        with JwksView(settings.kafka_bootstrap, issuer=settings.token_issuer) as view:
            view.wait_ready(30)
            _json(view.document())
    except BrokerError as exc:
        raise _fail(str(exc), "is Kafka up? permbroker stack status") from exc


# --- inventory --------------------------------------------------------------------------------

async def _held(settings: Settings, records: list[AgentRecord],
                now: datetime) -> tuple[dict[str, list[Any]], dict[str, datetime]]:
    store = RedisGrantStore.from_url(settings.redis_url)
    ids = IdentityStore.from_url(settings.redis_url)
    try:
        held = {r.agent_id: await store.active_grants(r.agent_id, now) for r in records}
        return held, await ids.last_acted()
    finally:
        await store.aclose()
        await ids.aclose()


def inventory(
    stale_after: Annotated[str | None, typer.Option(
        help="Flag keys older than this (default PERMBROKER_AGENT_KEY_MAX_AGE_S).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every agent: owner, model, baseline, what it holds now, when it last acted, and flags."""
    settings, now = cli_settings(), datetime.now(UTC)
    max_age = parse_duration(stale_after) if stale_after else settings.agent_key_max_age_s
    if max_age is None:
        raise _fail(f"--stale-after {stale_after!r} is not a duration", "use e.g. 30d, 12h")
    records = _run(lambda: read_registry(settings.kafka_bootstrap)).records()
    held, acted = _run(lambda: asyncio.run(_held(settings, records, now)))
    try:
        classes = load_policy(settings.policy_path).classes
    except PolicyError as exc:
        raise _fail(f"invalid policy {settings.policy_path}: {exc}") from exc
    rows = inventory_rows(records, classes, held, acted, now=now,
                          key_max_age=timedelta(seconds=max_age))
    if as_json:
        _json([row.to_json() for row in rows])
        return
    _print_inventory(rows, now)


def _print_inventory(rows: list[InventoryRow], now: datetime) -> None:
    table = Table("agent", "owner", "model", "status", "baseline", "holds now", "last acted",
                  "flags", title=f"{len(rows)} agent(s)")
    for row in rows:
        holds = "\n".join(f"{', '.join(g.scopes)} until {g.expires_at:%H:%M:%S}Z "
                          f"({(g.expires_at - now).total_seconds():.0f}s left)"
                          for g in row.grants) or "-"
        table.add_row(row.agent_id, row.owner, row.model, row.status, "\n".join(row.baseline),
                      holds, _ago(row.last_acted, now),
                      "[red]" + ", ".join(row.flags) + "[/]" if row.flags else "")
    out.print(table if rows else "no agents registered")
