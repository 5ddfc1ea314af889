"""``permbroker inventory``: every agent, what it holds now, when it last acted, and flags. L3.

Imports broker (adapters, core, policy, config, cli.agents's helpers) and schemas. The inventory
joins the registry (Kafka, the record), what agents hold now (Redis), when they last acted
(Redis) and their baselines (the policy), and flags what needs attention.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from broker.adapters.kafka.registry_view import read_registry
from broker.adapters.redis.identity import IdentityStore
from broker.adapters.redis.store import RedisGrantStore
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.identity.agents import JsonOpt, _ago, _fail, _json, _run, out
from broker.cli.output import human
from broker.cli.scope import cli_scope
from broker.config import Settings
from broker.errors import PolicyError
from broker.identity.inventory import InventoryRow, inventory_rows
from broker.policy import load_policy
from broker.policy.fields import parse_duration
from schemas.events import AgentRecord

inventory_app = typer.Typer()


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


@inventory_app.command("inventory")
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
    records = cli_scope().keep(
        _run(lambda: read_trusted(lambda t: read_registry(cli_kafka(), t))).records(),
        lambda r: r.agent_id)
    held, acted = _run(lambda: asyncio.run(_held(settings, records, now)))
    try:
        policy = load_policy(settings.policy_path)
    except PolicyError as exc:
        raise _fail(f"invalid policy {settings.policy_path}: {exc}") from exc
    rows = inventory_rows(records, policy.classes, held, acted, now=now,
                          key_max_age=timedelta(seconds=max_age), lifecycle=policy.lifecycle)
    if as_json:
        _json([row.to_json() for row in rows])
        return
    _print_inventory(rows, now)


def _print_inventory(rows: list[InventoryRow], now: datetime) -> None:
    table = Table("agent", "owner", "model", "status", "baseline", "holds now", "last acted",
                  "flags", title=f"{len(rows)} agent(s)")
    for row in rows:
        holds = "\n".join(f"{', '.join(g.scopes)} until {g.expires_at:%H:%M:%S}Z "
                          f"({human((g.expires_at - now).total_seconds())} left)"
                          for g in row.grants) or "-"
        table.add_row(row.agent_id, escape(row.owner), row.model, row.status,
                      "\n".join(row.baseline),
                      holds, _ago(row.last_acted, now),
                      "[red]" + ", ".join(row.flags) + "[/]" if row.flags else "")
    out.print(table if rows else "no agents registered")
