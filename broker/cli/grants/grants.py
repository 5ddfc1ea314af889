"""``permbroker grants ...``: list, show, revoke and rebuild grants. L3 (Typer + Rich).

Imports broker (adapters, core, sdk) and schemas. Lists read the Redis view; a grant is named by
its whole id or a unique prefix; ``revoke`` sends an operator-signed command for one grant and
waits for the worker's answer; ``rebuild`` refills the view from the grant topic (Kafka is the
record).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from broker.adapters.kafka import rebuild
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis.calls import shown as masked
from broker.adapters.redis.delegation import DelegationStore
from broker.adapters.redis.store import RedisGrantStore
from broker.audit.records import rebuild_audit
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.output import JsonOpt, err, fail, out, until
from broker.cli.output import print_json as _print_json
from broker.cli.scope import Scope, cli_scope
from broker.config import Settings
from broker.errors import BrokerError, CommandRefused
from broker.grants.revocation import OPERATOR_REVOKE_RULE
from broker.grants.selection import resolve_grant
from broker.sdk.operator.client import OperatorClient
from schemas import topics
from schemas.events import GrantIssued

grants_app = typer.Typer(help="Inspect, revoke and rebuild grants.", no_args_is_help=True)


async def _with_store(settings: Settings, fn: Any) -> Any:
    store = RedisGrantStore.from_url(settings.redis_url, margin_s=settings.record_margin_s)
    try:
        return await fn(store)
    finally:
        await store.aclose()


async def _visible_grants(store: RedisGrantStore, scope: Scope, agent: str | None,
                          now: datetime) -> list[GrantIssued]:
    """The live grants the operator sees (of ``agent`` only, if given). A scoped operator's
    are read agent by agent from the registry's list of its tenants' agents: a tenant's
    operator user may not list the store's keys, nor read another tenant's."""
    if scope.everything:
        agents = [agent] if agent else await store.agents_with_grants()
    else:
        agents = [a for a in ([agent] if agent else scope.agents()) if scope.sees(a)]
    return scope.keep([g for a in agents for g in await store.active_grants(a, now)],
                      lambda g: g.agent_id)


def _grant_row(g: GrantIssued, now: datetime) -> dict[str, Any]:
    return {
        **g.model_dump(mode="json"),
        "remaining_s": round((g.expires_at - now).total_seconds(), 1),
    }


@grants_app.command("list")
def grants_list(
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Active grants in the Redis view (absolute expiry and time left); an operator scoped to
    tenants sees its tenants' agents' only."""
    settings, now, scope = cli_settings(), datetime.now(UTC), cli_scope()

    async def load(store: RedisGrantStore) -> list[GrantIssued]:
        return await _visible_grants(store, scope, agent, now)

    try:
        grants = asyncio.run(_with_store(settings, load))
    except BrokerError as exc:
        raise fail(
            exc, f"is Redis up at {masked(settings.redis_url)}? (permbroker stack status)"
        ) from exc
    if as_json:
        _print_json([_grant_row(g, now) for g in grants])
        return
    table = Table()
    # Ids are printed whole (never cut to fit the terminal) so they can be copied: the grant
    # and its agent share one column (one above the other), so even 80 columns leave room for
    # the resources; scopes, expiry and rules wrap.
    width = max((len(g.grant_id) for g in grants), default=5)
    table.add_column("grant / agent", no_wrap=True, min_width=width)
    table.add_column("resources", min_width=max(
        (len(r) for g in grants for r in g.resources), default=1))
    for name in ("scopes", "expires", "rules"):
        table.add_column(name, overflow="fold")
    for g in sorted(grants, key=lambda g: g.expires_at):
        table.add_row(
            f"{g.grant_id}\n{g.agent_id}",
            "\n".join(g.resources) or "*",
            "\n".join(g.scopes),
            until(g.expires_at, now),
            ", ".join(g.rules),
        )
    out.print(table if grants else "no active grants")


def resolve(settings: Settings, ref: str, agent: str | None, now: datetime) -> GrantIssued:
    """The active grant ``ref`` names (whole id or unique prefix) among those the operator
    sees; a CLI error otherwise."""
    scope = cli_scope()

    async def load(store: RedisGrantStore) -> list[GrantIssued]:
        return await _visible_grants(store, scope, agent, now)

    try:
        grant, candidates = resolve_grant(ref, asyncio.run(_with_store(settings, load)))
    except BrokerError as exc:
        raise fail(exc, f"is Redis up at {masked(settings.redis_url)}? (permbroker stack "
                   "status)") from exc
    if len(candidates) > 1:
        shown = ", ".join(candidates[:5]) + (", ..." if len(candidates) > 5 else "")
        raise fail(f"{ref} is the start of {len(candidates)} grant ids: {shown}",
                   "give more of the id")
    if grant is None:
        raise fail(f"no active grant {ref}" + (f" for agent {agent}" if agent else ""),
                   "it may have expired or been revoked: permbroker audit tail"
                   + (f" --agent {agent}" if agent else ""))
    return grant


def _print_fields(fields: dict[str, Any], now: datetime, times: tuple[str, ...]) -> None:
    for k, v in fields.items():  # user data: printed as text
        shown = until(datetime.fromisoformat(v), now) if k in times and v else v
        out.print(Text.assemble((f"{k}", "bold"), f": {shown}"), soft_wrap=True)


@grants_app.command("show")
def grants_show(
    grant_id: Annotated[str, typer.Argument(help="The grant id, or a unique prefix of it.")],
    agent: Annotated[str | None, typer.Option(help="The grant's agent (faster).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """One active grant, found by its id (or a unique prefix) among every agent's grants.

    A delegated grant names its parent (``parent_grant_id``) and delegators; any grant lists the
    active grants delegated from it (``children``, as agent/grant).
    """
    settings, now = cli_settings(), datetime.now(UTC)
    g = resolve(settings, grant_id, agent, now)
    try:
        children = asyncio.run(_with_store(settings, lambda s: DelegationStore(
            s.client).live_children(g.agent_id, g.grant_id)))
    except BrokerError as exc:
        raise fail(exc, f"is Redis up at {masked(settings.redis_url)}?") from exc
    shown = {**g.model_dump(mode="json"), "children": [f"{a}/{c}" for a, c in children]}
    if as_json:
        _print_json({**_grant_row(g, now), "children": shown["children"]})
    else:
        _print_fields(shown, now, ("issued_at", "expires_at"))


@grants_app.command("revoke")
def grants_revoke(
    grant_id: Annotated[str, typer.Argument(help="The grant id, or a unique prefix of it.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit).")],
    agent: Annotated[str | None, typer.Option(help="The grant's agent (faster).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke one grant: a signed, audited command a worker carries out and answers.

    Signed with this operator's key (the grant.revoked reason names the operator); waits for the
    worker's answer and prints the revocation. Every grant of an agent: permbroker agents revoke.
    """
    settings, now = cli_settings(), datetime.now(UTC)
    grant = resolve(settings, grant_id, agent, now)
    try:
        with OperatorClient(settings, cli_kafka()) as op:
            done = op.revoke_grant(grant.agent_id, grant.grant_id, reason=reason,
                                   timeout=settings.decision_timeout_s * 2)
    except CommandRefused as exc:
        raise fail(exc, "list what is active: permbroker grants list") from exc
    except BrokerError as exc:
        raise fail(exc, "are Kafka and a worker up, and is there an operator key? "
                   "(permbroker stack status; permbroker keys init)") from exc
    revoked = {"grant_id": grant.grant_id, "agent_id": grant.agent_id,
               "scopes": list(grant.scopes), "resources": list(grant.resources),
               "revoked_at": done.answered_at.isoformat(),
               "expires_at": grant.expires_at.isoformat(), "reason": done.reason,
               "rule": OPERATOR_REVOKE_RULE, "cause_event_id": done.command_id}
    if as_json:
        _print_json(revoked)
        return
    out.print(Text(f"revoked grant {grant.grant_id} of {grant.agent_id}"), soft_wrap=True)
    _print_fields(revoked, datetime.now(UTC), ("revoked_at", "expires_at"))


@grants_app.command("rebuild")
def grants_rebuild(as_json: JsonOpt = False) -> None:
    """Rebuild the Redis view of active grants from the grant topic (Kafka is the record)."""
    settings, now = cli_settings(), datetime.now(UTC)
    try:
        folded = read_trusted(lambda t: rebuild.collect(cli_kafka(), now, t))
        restored = asyncio.run(_with_store(settings, lambda s: rebuild.apply(s, folded, now)))
        record = rebuild_audit(
            f"operator {os.environ.get('USER', 'unknown')}", now, records=folded.records,
            restored=restored, revocations=len(folded.revocations),
            undecodable=folded.undecodable)
        Publisher(cli_kafka(), source="/operators/cli").publish(
            topics.AUDIT_RAW.name, record)
    except BrokerError as exc:
        raise fail(exc, "are Kafka and Redis up? permbroker stack status") from exc
    result = {
        "records_read": folded.records,
        "active_grants": restored,
        "revocation_markers": len(folded.revocations),
        "undecodable": folded.undecodable,
    }
    if as_json:
        _print_json(result)
    else:
        out.print(
            f"read {folded.records} record(s) of {topics.GRANTS.name}; restored {restored} "
            f"active grant(s) and {len(folded.revocations)} revocation marker(s)"
        )
        if folded.undecodable:
            err.print(
                f"[yellow]{folded.undecodable} undecodable record(s) skipped (see the DLQ)[/]"
            )
