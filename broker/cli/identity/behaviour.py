"""``permbroker agents stats ID`` and ``agents class-stats CLASS --model V``: behaviour profiles.

L3: imports adapters, policy, cli.

Reads the profile the workers keep in Redis (``streams.analytics``); windows are those of the
policy's ``detectors`` section (``PERMBROKER_POLICY_PATH``), every time absolute (UTC) with the
time elapsed or remaining.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from broker.adapters.redis.stats.profiles import ProfileStore
from broker.behaviour.stats import report
from broker.cli.context import cli_settings
from broker.cli.identity.agents import AgentArg
from broker.cli.output import JsonOpt, fail, human, out, print_json, stamp, until
from broker.cli.scope import cli_scope, not_theirs
from broker.config import Settings
from broker.errors import BrokerError, PolicyError
from broker.identity.tenants import asked_tenant, visible
from broker.policy import load_policy
from broker.policy.detectors import Detectors

behaviour_app = typer.Typer()


def _detectors(settings: Settings) -> Detectors | None:
    try:
        return load_policy(settings.policy_path).detectors
    except PolicyError:
        return None  # the default windows still show the profile


async def read_report(settings: Settings, agent_id: str, now: datetime) -> dict[str, Any] | None:
    """The agent's profile report, or None when it has none (never profiled, or expired)."""
    store = ProfileStore.from_url(settings.redis_url)
    try:
        profile, _position = await store.load(agent_id)
        ttl = await store.ttl_ms(agent_id)
    finally:
        await store.close()
    return report(agent_id, profile, now, _detectors(settings), ttl) if profile else None


def _when(text: str | None, now: datetime) -> str:
    return until(datetime.fromisoformat(text), now) if text else "-"


@behaviour_app.command("stats")
def agents_stats(agent: AgentArg, as_json: JsonOpt = False) -> None:
    """The agent's behaviour: request, grant and denial rates in the detectors' windows,
    hours of activity, scopes and resource patterns used."""
    settings, now, scope = cli_settings(), datetime.now(UTC), cli_scope()
    if not scope.sees(agent):
        raise fail(not_theirs(scope, agent), "permbroker agents list")
    try:
        data = asyncio.run(read_report(settings, agent, now))
    except BrokerError as exc:
        raise fail(exc, "is Redis up? (permbroker stack status)") from exc
    if data is None:
        raise fail(f"no behaviour profile for agent {agent}",
                   "profiles are kept for agents of classes the policy's detectors watch, "
                   "from their first decided request")
    if as_json:
        print_json(data)
        return
    t = data["totals"]
    out.print(f"[bold]{agent}[/] class {data['agent_class']}, model {data['model_version']}: "
              f"{t['requests']} requests ({t['granted']} granted, {t['denied']} denied)")
    out.print(f"first seen {_when(data['first_seen'], now)}; last seen "
              f"{_when(data['last_seen'], now)}; profile expires {_when(data['expires_at'], now)}")
    table = Table("window", "from", "requests", "granted", "denied", "per minute",
                  title=f"as of {stamp(now)}")
    for w in data["windows"]:
        table.add_row(human(float(w['window_s'])), _when(w["from"], now), str(w["requests"]),
                      str(w["granted"]), str(w["denied"]), f"{w['per_minute']:g}")
    out.print(table)
    hours = ", ".join(f"{h}h:{c}" for h, c in data["hours_utc"].items()) or "-"
    out.print(f"[bold]hours (UTC)[/]: {hours}")
    for title, key in (("scopes", "scopes"), ("resource patterns", "resource_patterns")):
        used = data[key]
        out.print(f"[bold]{title}[/]: " + (", ".join(
            f"{name} (last {_when(at, now)})" for name, at in used.items()) or "-"))
    for detector, at in data["detectors_silent_until"].items():
        out.print(f"[bold]{detector}[/] fired; silent until {_when(at, now)}")


async def read_group(settings: Settings, agent_class: str, model_version: str,
                     now: datetime, tenant: str) -> dict[str, Any] | None:
    """The tenant's class and model version's counts, or None when the policy has no
    detectors."""
    cfg = _detectors(settings)
    if cfg is None:
        return None
    store = ProfileStore.from_url(settings.redis_url)
    try:
        return await store.group_stats(agent_class, model_version, cfg, now, tenant)
    finally:
        await store.close()


@behaviour_app.command("class-stats")
def class_stats(
    agent_class: Annotated[str, typer.Argument(help="The agent class.")],
    model: Annotated[str, typer.Option(help="The model version.")],
    tenant: Annotated[str | None, typer.Option(
        help="Whose agents of the class (default: this operator's one tenant when it is "
        "scoped to one, else the default tenant).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Requests, grants and denials of one tenant's agents of a class on one model version, in
    the detectors' windows ending now. An operator scoped to tenants reads its tenants' only."""
    settings, now = cli_settings(), datetime.now(UTC)
    own = cli_scope().tenants
    tenant = asked_tenant(own, tenant)
    if not visible(own, tenant):
        raise fail(f"this operator reads tenants {', '.join(sorted(own or ()))}, not {tenant}",
                   "name one of them: --tenant")
    try:
        data = asyncio.run(read_group(settings, agent_class, model, now, tenant))
    except BrokerError as exc:
        raise fail(exc, "is Redis up? (permbroker stack status)") from exc
    if data is None:
        raise fail(f"the policy at {settings.policy_path} has no detectors section",
                   "class profiles are kept for the classes its detectors watch")
    if as_json:
        print_json(data)
        return
    table = Table("window", "from", "requests", "granted", "denied", "per minute",
                  title=f"class {agent_class} of tenant {tenant}, model {model}, as of "
                  f"{stamp(now)}")
    for w in data["windows"]:
        table.add_row(human(float(w['window_s'])), _when(w["from"], now), str(w["requests"]),
                      str(w["granted"]), str(w["denied"]), f"{w['per_minute']:g}")
    out.print(table)
