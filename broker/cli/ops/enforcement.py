"""``permbroker revocations status`` and ``permbroker api``. L3 (Typer + Rich).

Imports broker (adapters, core, api) and schemas, never streams.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import read_since
from broker.adapters.kafka.edge import Trust
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.output import human
from broker.delivery.propagation import RevocationStatus, fold_status
from broker.errors import BrokerError
from broker.policy.fields import parse_duration
from schemas import topics
from schemas.events import AgentRevoked, EnforcementPointStatus, RevocationAcknowledged

revocations_app = typer.Typer(help="Follow revocations to the enforcement points.",
                              no_args_is_help=True)
api_app = typer.Typer(help="Run the HTTP API (FastAPI on uvicorn).", invoke_without_command=True)
out = Console()
err = Console(stderr=True)


def collect_status(kafka: KafkaAccess, since: datetime, trust: Trust) -> RevocationStatus:
    """Revocations on the grant topic and acks/status reports since ``since`` (blocking); only
    what the broker and the registered enforcement points signed counts."""
    revs = [r.event for r in read_since(kafka, topics.GRANTS.name, since, trust=trust,
                                        reader="revocation-status")
            if isinstance(r.event, AgentRevoked)]
    acks: list[RevocationAcknowledged] = []
    statuses: list[EnforcementPointStatus] = []
    for rec in read_since(kafka, topics.REVOCATION_ACKS.name, since, trust=trust,
                          reader="revocation-status"):
        if isinstance(rec.event, RevocationAcknowledged):
            acks.append(rec.event)
        elif isinstance(rec.event, EnforcementPointStatus):
            statuses.append(rec.event)
    return fold_status(revs, acks, statuses)


@revocations_app.command("status")
def status(
    since: Annotated[str, typer.Option(help="How far back: 10m, 1h, 1d.")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Per enforcement point: propagation time of each revocation, and which are unconfirmed."""
    from broker.api.routes_operator import status_json

    seconds = parse_duration(since)
    if seconds is None:
        err.print(f"[bold red]error:[/] --since {since!r} is not a duration (e.g. 10m, 1h)")
        raise typer.Exit(2)
    now = datetime.now(UTC)
    try:
        report = read_trusted(lambda t: collect_status(
            cli_kafka(), now - timedelta(seconds=seconds), t))
    except BrokerError as exc:
        err.print(f"[bold red]error:[/] {exc}\n[dim]hint:[/] is Kafka up? permbroker stack status")
        raise typer.Exit(1) from exc
    data = status_json(report, now)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    _print_status(data, len(report.revocations), since)


def _print_status(data: dict[str, object], revocations: int, since: str) -> None:
    points = data["enforcement_points"]
    assert isinstance(points, list)
    out.print(f"{revocations} revocation(s) in the last {since}; "
              f"{len(points)} enforcement point(s)")
    table = Table("enforcement point", "topic", "confirmed", "p50", "max", "unconfirmed",
                  "last report")
    for p in points:
        table.add_row(
            p["name"], p["topic"] or "-", str(len(p["confirmed"])),
            _fmt_ms(p["p50_ms"]), _fmt_ms(p["max_ms"]),
            ", ".join(f"{u['cause_event_id']} ({u['agent_id']}, "
                      f"{human(float(str(u['age_s'])))} ago)"
                      for u in p["unconfirmed"]) or "none",
            (p["last_report"] or "never") + (" [red](silent)[/]" if p["silent"] else ""),
        )
    out.print(table)
    for p in points:
        for c in p["confirmed"]:
            out.print(f"  {p['name']}: {c['cause_event_id']} ({c['agent_id']}) applied "
                      f"{c['applied_at']} after {c['propagation_ms']} ms")


def _fmt_ms(value: object) -> str:
    return f"{value} ms" if value is not None else "-"


@api_app.callback()
def api(
    host: Annotated[str | None, typer.Option(help="Listen address (PERMBROKER_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (PERMBROKER_API_PORT).")] = None,
) -> None:
    """Serve the HTTP API: check, grants, escalations, renewals, releases, revoke, health."""
    import uvicorn

    from broker.adapters import logs
    from broker.api.app import create_app

    settings = cli_settings()
    logs.hide(settings.kafka_password.get_secret_value() if settings.kafka_password else None)
    uvicorn.run(create_app(settings), host=host or settings.api_host,
                port=port or settings.api_port, log_level="info",
                log_config=logs.logging_config("INFO"))
