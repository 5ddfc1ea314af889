"""``permbroker worker``, ``demo`` and ``request``: run a worker, play the demo, act as an agent.

L3: imports broker (adapters, sdk, policy, config), never streams (the worker is execed).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
from rich.markup import escape

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.redis.calls import ping
from broker.cli.context import cli_kafka, cli_settings, trusted
from broker.cli.output import JsonOpt, fail, out, until
from broker.cli.output import print_json as _print_json
from broker.errors import BrokerError
from broker.policy.fields import parse_duration
from broker.sdk.agent.client import AgentClient

run_app = typer.Typer()


@run_app.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="crit|error|warn|info|debug")] = "info",
) -> None:
    """Run a stream worker (faust) that decides escalations and applies risk signals."""
    try:  # fail in seconds, naming the cause, rather than a worker retrying forever
        cli_kafka()
        ping(cli_settings().redis_url)
    except BrokerError as exc:
        raise fail(exc, "are Kafka and Redis up? permbroker stack status") from exc
    os.execvp(sys.executable, [sys.executable, "-m", "streams", loglevel])  # noqa: S606


@run_app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the demo stack running afterwards.")] = False,
) -> None:
    """Play the fraud-agent scenario end to end on a real Kafka and Redis; exit 0 if it matched."""
    from broker.demo.scenario import run_demo

    raise typer.Exit(run_demo(keep=keep))


@run_app.command()
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
    settings = cli_settings()
    try:
        keys = AgentKeyStore.from_settings(settings)
        unsigned = settings.allow_unsigned and not keys.exists(agent)  # dev mode only
        with trusted() as trust, AgentClient(agent, cli_kafka(), keys=keys, unsigned=unsigned,
                                             trust=trust) as client:
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
        raise fail(exc, "is the stack up (permbroker stack up) and a worker running?") from exc
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
            out.print(f"  denied {d.scope}: {escape(d.reason)} {escape(f'[rule {d.rule}]')}")
        out.print(f"  policy {decision.policy_revision}; rules {', '.join(decision.matched_rules)}")
    raise typer.Exit(0 if decision.outcome == "granted" else 3)
