"""``permbroker approvals list|approve|deny``: held requests and operators' votes. L3.

Imports broker (sdk, config, errors). Votes are signed with this operator's key (``permbroker
keys init``); a worker counts each approver once, a deny wins, and the requesting agent never
approves itself. Times are absolute, with the time left in the approval window.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from broker.adapters.redis.calls import shown
from broker.cli.context import cli_kafka, cli_settings
from broker.cli.output import JsonOpt, fail, out, print_json, until
from broker.cli.scope import cli_scope
from broker.errors import BrokerError
from broker.sdk.operator.approvals import Approver, Verdict, held_requests, held_row

approvals_app = typer.Typer(help="Requests waiting for approval: list, approve, deny.",
                            no_args_is_help=True)
AgentOpt = Annotated[str, typer.Option("--agent", help="The requesting agent.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the audit).")]


@approvals_app.command("list")
def approvals_list(
    agent: Annotated[str | None, typer.Option(help="Only this agent's requests.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Held requests: scopes, quorum, votes so far, window end (absolute and time left)."""
    settings, now = cli_settings(), datetime.now(UTC)
    try:
        held = asyncio.run(held_requests(settings))
    except BrokerError as exc:
        raise fail(exc, f"is Redis up at {shown(settings.redis_url)}? (permbroker stack status)") \
            from exc
    held = cli_scope().keep([h for h in held if agent in (None, h.pending.event.agent_id)],
                            lambda h: h.pending.event.agent_id)
    rows = [held_row(h, now) for h in held]
    if as_json:
        print_json(rows)
        return
    table = Table("request", "agent", "scopes", "status", "votes", "window ends")
    for h, row in zip(held, rows, strict=False):
        votes = ", ".join(f"{a}: {v}" for a, v in h.votes.items()) or "-"
        table.add_row(row["request_id"], row["agent_id"], "\n".join(row["scopes"]),
                      row["status"], f"{votes}\n(need {row['quorum']} of "
                      f"{len(row['approvers'])}: {', '.join(row['approvers'])})",
                      until(h.pending.event.window_expires_at, now))
    out.print(table if rows else "no request is waiting for approval")


def _vote(request_id: str, agent: str, verdict: Verdict, reason: str) -> None:
    try:
        approver = Approver.operator(cli_settings(), cli_kafka())
        vote = approver.vote(request_id, agent, verdict, reason)
    except BrokerError as exc:
        raise fail(exc, "is Kafka up, and is there an operator key? permbroker keys init") \
            from exc
    out.print(f"{verdict} by {vote.approver} on {request_id} of {agent} published "
              f"(vote {vote.vote_id}); watch: permbroker audit tail --agent {agent}")


@approvals_app.command("approve")
def approvals_approve(request_id: str, agent: AgentOpt, reason: ReasonOpt = "") -> None:
    """Approve a held request as this operator (counts once toward its quorum)."""
    _vote(request_id, agent, "approve", reason)


@approvals_app.command("deny")
def approvals_deny(request_id: str, agent: AgentOpt, reason: ReasonOpt = "") -> None:
    """Deny a held request as this operator (one deny ends it)."""
    _vote(request_id, agent, "deny", reason)
