"""The ``permbroker`` command line (Typer + Rich). L3: imports broker and schemas, never streams.

Every list command takes ``--json``; every time shown is absolute with the time remaining;
every error says what to do next and exits non-zero.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka import rebuild
from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis.store import RedisGrantStore
from broker.audit.records import rebuild_audit
from broker.cli import behaviour as cli_behaviour  # noqa: F401  (registers `agents stats`)
from broker.cli.agents import agents_app
from broker.cli.approvals import approvals_app
from broker.cli.audit import audit_app
from broker.cli.enforcement import api_app, revocations_app
from broker.cli.keys import inventory, keys_app
from broker.cli.output import JsonOpt, err, fail, out, until
from broker.cli.output import print_json as _print_json
from broker.cli.policy import register as register_policy_commands
from broker.cli.revoke import register as register_revoke_command
from broker.cli.stack import stack_app
from broker.config import Settings
from broker.errors import BrokerError, PolicyError
from broker.policy import load_policy
from broker.policy.fields import parse_duration
from broker.sdk.agent.client import AgentClient
from broker.sdk.operator.client import OperatorClient
from schemas import topics
from schemas.events import GrantIssued

app = typer.Typer(
    help="permbroker: time-boxed, narrow, revocable permissions for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
grants_app = typer.Typer(help="Inspect, revoke and rebuild grants.", no_args_is_help=True)
policy_app = typer.Typer(help="Work with policy bundles.", no_args_is_help=True)
app.add_typer(
    stack_app, name="stack", help="Start, stop and inspect the local Kafka + Redis stack."
)
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
app.add_typer(policy_app, name="policy")
app.add_typer(revocations_app, name="revocations")
app.add_typer(api_app, name="api")
register_policy_commands(policy_app)
register_revoke_command(app)
app.add_typer(agents_app, name="agents")
app.add_typer(keys_app, name="keys")
app.add_typer(approvals_app, name="approvals")
app.command("inventory")(inventory)

@app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="crit|error|warn|info|debug")] = "info",
) -> None:
    """Run a stream worker (faust) that decides escalations and applies risk signals."""
    os.execvp(sys.executable, [sys.executable, "-m", "streams", loglevel])  # noqa: S606


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the demo stack running afterwards.")] = False,
) -> None:
    """Play the fraud-agent scenario end to end on a real Kafka and Redis; exit 0 if it matched."""
    from broker.demo.scenario import run_demo

    raise typer.Exit(run_demo(keep=keep))


@app.command()
def request(
    agent: Annotated[str, typer.Option(help="The agent id to act as.")],
    scope: Annotated[list[str], typer.Option(help="Scope to request (repeatable).")],
    reason: Annotated[str, typer.Option(help="Why the agent needs it.")],
    confidence: Annotated[float, typer.Option(help="The agent's confidence, 0..1.")],
    resource: Annotated[
        list[str] | None, typer.Option(help="Resource to narrow to (repeatable).")
    ] = None,
    duration: Annotated[str, typer.Option(help="Requested duration: 90s, 15m, 1h.")] = "15m",
    risk: Annotated[float, typer.Option(help="Risk score the agent observed, 0..1.")] = 0.0,
    case: Annotated[str | None, typer.Option(help="Task / case id.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the decision.")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Send one escalation request as an agent and wait for the decision."""
    seconds = parse_duration(duration)
    if seconds is None or seconds <= 0:
        raise fail(f"--duration {duration!r} is not a duration", "use e.g. 90s, 15m, 2h")
    settings = Settings()
    try:
        keyless = not AgentKeyStore.from_settings(settings).exists(agent)
        unsigned = settings.allow_unsigned and keyless  # dev mode only
        with AgentClient(agent, settings.kafka_bootstrap, unsigned=unsigned) as client:
            decision = client.request_escalation(
                scope,
                resources=resource or [],
                duration_s=seconds,
                reason=reason,
                confidence=confidence,
                risk_score=risk,
                case_id=case,
                timeout=timeout,
            )
    except (BrokerError, ValueError) as exc:
        raise fail(str(exc), "is the stack up (permbroker stack up) and a worker running?") from exc
    if as_json:
        _print_json(decision.model_dump(mode="json"))
    else:
        color = "green" if decision.outcome == "granted" else "red"
        out.print(f"[bold {color}]{decision.outcome.upper()}[/] request {decision.request_id}")
        if decision.grant_id:
            out.print(
                f"  grant {decision.grant_id}: {', '.join(decision.granted_scopes)}"
                f" on {', '.join(decision.resources) or 'any resource'}"
            )
            out.print(f"  expires {until(decision.expires_at)}")
        if decision.clamped_by:
            out.print(f"  clamped by {decision.clamped_by}")
        for d in decision.denied:
            out.print(f"  denied {d.scope}: {d.reason} [rule {d.rule}]")
        out.print(f"  policy {decision.policy_revision}; rules {', '.join(decision.matched_rules)}")
    raise typer.Exit(0 if decision.outcome == "granted" else 3)


async def _with_store(settings: Settings, fn: Any) -> Any:
    store = RedisGrantStore.from_url(settings.redis_url, margin_s=settings.record_margin_s)
    try:
        return await fn(store)
    finally:
        await store.aclose()


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
    """Active grants in the Redis view (absolute expiry and time left)."""
    settings, now = Settings(), datetime.now(UTC)

    async def load(store: RedisGrantStore) -> list[GrantIssued]:
        agents = [agent] if agent else await store.agents_with_grants()
        return [g for a in agents for g in await store.active_grants(a, now)]

    try:
        grants = asyncio.run(_with_store(settings, load))
    except BrokerError as exc:
        raise fail(
            str(exc), f"is Redis up at {settings.redis_url}? (permbroker stack status)"
        ) from exc
    if as_json:
        _print_json([_grant_row(g, now) for g in grants])
        return
    table = Table("agent", "grant", "scopes", "resources", "expires", "rules")
    for g in sorted(grants, key=lambda g: g.expires_at):
        table.add_row(
            g.agent_id,
            g.grant_id,
            "\n".join(g.scopes),
            "\n".join(g.resources) or "*",
            until(g.expires_at, now),
            ", ".join(g.rules),
        )
    out.print(table if grants else "no active grants")


@grants_app.command("show")
def grants_show(
    grant_id: str,
    agent: Annotated[str, typer.Option(help="The grant's agent.")],
    as_json: JsonOpt = False,
) -> None:
    """One active grant of an agent."""
    settings, now = Settings(), datetime.now(UTC)
    grants = asyncio.run(_with_store(settings, lambda s: s.active_grants(agent, now)))
    match = [g for g in grants if g.grant_id == grant_id]
    if not match:
        raise fail(
            f"no active grant {grant_id} for agent {agent}",
            "it may have expired or been revoked: permbroker audit tail --agent " + agent,
        )
    if as_json:
        _print_json(_grant_row(match[0], now))
    else:
        for k, v in _grant_row(match[0], now).items():
            out.print(f"[bold]{k}[/]: {v}")
        out.print(f"[bold]expires[/]: {until(match[0].expires_at, now)}")


@grants_app.command("revoke")
def grants_revoke(
    agent: Annotated[str, typer.Option(help="Revoke every grant of this agent.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit).")],
    operator: Annotated[str, typer.Option(help="Who is revoking.")] = os.environ.get(
        "USER", "operator"
    ),
) -> None:
    """Revoke all grants of an agent (published as an operator risk signal; workers apply it)."""
    settings = Settings()
    try:  # signed with the operator key: agent credentials cannot revoke another agent
        with OperatorClient(settings) as op:
            signal = op.revoke_grants(agent, reason=reason, on_behalf=operator)
    except BrokerError as exc:
        raise fail(str(exc), "is Kafka up, and is there an operator key? permbroker keys init") \
            from exc
    out.print(
        f"revocation {signal.signal_id} for {agent} published; "
        f"watch: permbroker audit tail --agent {agent}"
    )


@grants_app.command("rebuild")
def grants_rebuild(as_json: JsonOpt = False) -> None:
    """Rebuild the Redis view of active grants from the grant topic (Kafka is the record)."""
    settings, now = Settings(), datetime.now(UTC)
    try:
        folded = rebuild.collect(settings.kafka_bootstrap, now)
        restored = asyncio.run(_with_store(settings, lambda s: rebuild.apply(s, folded, now)))
        record = rebuild_audit(
            f"operator {os.environ.get('USER', 'unknown')}", now, records=folded.records,
            restored=restored, revocations=len(folded.revocations),
            undecodable=folded.undecodable)
        Publisher(settings.kafka_bootstrap, source="/operators/cli").publish(
            topics.AUDIT_RAW.name, record)
    except BrokerError as exc:
        raise fail(str(exc), "are Kafka and Redis up? permbroker stack status") from exc
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


@policy_app.command("validate")
def policy_validate(path: Path, as_json: JsonOpt = False) -> None:
    """Load a policy bundle and report its revision, or the file, line and rule of each error."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        if as_json:
            _print_json(
                {
                    "valid": False,
                    "file": exc.file,
                    "line": exc.line,
                    "column": exc.column,
                    "rule": exc.rule,
                    "error": exc.message,
                    "suggestion": exc.suggestion,
                }
            )
        else:
            err.print(f"[bold red]invalid:[/] {escape(str(exc))}")  # CEL has [brackets]
        raise typer.Exit(2) from exc
    agents = [a.agent_id for a in policy.agents()]
    if as_json:
        _print_json(
            {
                "valid": True,
                "revision": policy.revision,
                "agents": agents,
                "max_grant_duration_s": policy.max_grant_duration_s,
            }
        )
    else:
        out.print(
            f"[green]valid[/] {path}: revision {policy.revision}, {len(agents)} agent(s), "
            f"longest grant {policy.max_grant_duration_s}s"
        )


def main() -> None:
    """Console entry point."""
    app()
