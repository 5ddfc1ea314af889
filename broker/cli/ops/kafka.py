"""``permbroker kafka provision`` and ``kafka acls show|apply``: topics and the ACL table. L3.

Imports typer, rich, broker (adapters, cli context and output), never streams. ``provision`` and
``acls apply`` run with the process's Kafka user, which must be a super user (the local stack's
``admin``: ``eval "$(permbroker stack env --role admin)"``); both are idempotent and say what
they created and what was in place. The table and the topics include those of every tenant
``PERMBROKER_TENANT_POLICIES_DIR`` declares; ``provision`` also creates those tenants' Kafka users
(``agent@<tenant>``, ``service@<tenant>``) with the passwords the Kafka credentials file keeps,
adding new ones to it.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import ensure_topics
from broker.cli.context import cli_kafka, cli_settings
from broker.cli.output import JsonOpt, fail, out, print_json
from broker.errors import BrokerError
from broker.identity.tenants import declared
from broker.stack.tenants import apply_acls, ensure_tenant_users, owned_topics
from schemas import topics

kafka_app = typer.Typer(help="Kafka authorization: the ACLs every role needs.",
                        no_args_is_help=True)
acls_app = typer.Typer(help="The ACL table derived from the topic registry.",
                       no_args_is_help=True)
kafka_app.add_typer(acls_app, name="acls")

_SUPER_HINT = "run it as Kafka's super user, e.g. eval \"$(permbroker stack env --role admin)\""
AppIdOpt = Annotated[str | None, typer.Option(
    "--app-id", help="The workers' app id (group and transactional id prefix); default: "
    "PERMBROKER_APP_ID.")]


def _table(title: str, rows: list[tuple[str, acls.Acl]]) -> Table:
    table = Table(title=title)
    for column in ("", "principal", "operation", "resource", "name", "pattern"):
        table.add_column(column)
    for state, a in rows:
        table.add_row(state, a.principal, a.operation, a.resource, a.name, a.pattern.lower())
    return table


def _declared(app_id: str | None) -> tuple[str, tuple[str, ...]]:
    """The workers' app id (the option, else the settings') and the tenants the settings
    declare."""
    settings = cli_settings()
    return app_id or settings.app_id, declared(settings.tenant_policies_dir)


def _apply(kafka: KafkaAccess, app_id: str | None, dry_run: bool = False) -> acls.Applied:
    app, tenants = _declared(app_id)
    return apply_acls(kafka, app, tenants, dry_run=dry_run, timeout=60)


@acls_app.command("show")
def show(app_id: AppIdOpt = None, as_json: JsonOpt = False) -> None:
    """Print the ACL table (no Kafka needed)."""
    app, tenants = _declared(app_id)
    wanted = acls.table(app, tenants=tenants)
    if as_json:
        print_json([a.as_dict() for a in wanted])
        return
    out.print(_table(f"{len(wanted)} ACLs", [("", a) for a in wanted]))


@acls_app.command("apply")
def apply(
    app_id: AppIdOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only say what would be created.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Create the missing ACLs of the table and delete those declared tenants take away
    (idempotent); list what was created, kept and removed."""
    try:
        kafka = cli_kafka()
        done = _apply(kafka, app_id, dry_run)
    except BrokerError as exc:
        raise fail(exc, _SUPER_HINT) from exc
    if as_json:
        print_json({**done.as_dict(), "dry_run": dry_run, "principal": kafka.principal})
        return
    verb, gone = ("would create", "would remove") if dry_run else ("created", "removed")
    rows = [(verb, a) for a in done.created] + [("kept", a) for a in done.kept] + \
        [(gone, a) for a in done.removed]
    out.print(_table(f"{len(done.created)} {verb}, {len(done.kept)} kept, "
                     f"{len(done.removed)} {gone}", rows))


@kafka_app.command()
def provision(app_id: AppIdOpt = None, as_json: JsonOpt = False) -> None:
    """Create the contract's missing topics, the declared tenants' missing Kafka users, then the
    missing ACLs (idempotent)."""
    try:
        kafka, settings = cli_kafka(), cli_settings()
        tenants = declared(settings.tenant_policies_dir)
        created = ensure_topics(kafka, [*topics.ALL_TOPICS, *owned_topics(tenants)],
                                timeout=60)
        users = ensure_tenant_users(settings, kafka, tenants, timeout=60)
        done = _apply(kafka, app_id)
    except BrokerError as exc:
        raise fail(exc, _SUPER_HINT) from exc
    if as_json:
        print_json({"topics_created": created, "tenants": list(tenants),
                    "users_created": users, **done.as_dict()})
        return
    out.print(f"topics created: {', '.join(created) or 'none (all there)'}; tenants' users "
              f"created: {', '.join(users) or 'none'}; ACLs: {len(done.created)} created, "
              f"{len(done.kept)} kept, {len(done.removed)} removed", highlight=False)
