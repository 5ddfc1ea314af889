"""`permbroker audit checks`: who performed a check on a resource, under which grant. L3 (Typer).

Imports broker (core, adapters), the audit command group. Reads the sealed audit (or an export):
the ``check.performed`` records workers write from enforcement points' reports. Resources are
stored as HMACs when the audit redacts them, so the resource asked about is matched both in clear
and as its HMAC (with this installation's audit key).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from broker.adapters.audit import keys as audit_keys
from broker.audit.checks import matches
from broker.audit.redact import hmac_value
from broker.cli.audit.audit import FileOpt, KafkaHint, SinceOpt, audit_app, load_records
from broker.cli.context import cli_settings
from broker.cli.output import JsonOpt, fail, out, print_json, stamp, time_option
from broker.errors import BrokerError
from schemas.events import AuditRecord


def _stored_forms(resource: str | None) -> list[str | None]:
    """The resource as the audit may hold it: in clear, and as its HMAC when a key is here."""
    if resource is None:
        return [None]
    try:
        key = audit_keys.load_hmac_key(cli_settings())
    except BrokerError:
        return [resource]
    return [resource, hmac_value(key, resource)]


@audit_app.command("checks")
def checks(
    resource: Annotated[str | None, typer.Option(help="Only checks on this resource.")] = None,
    scope: Annotated[str | None, typer.Option(help="Only checks of this scope.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's checks.")] = None,
    grant: Annotated[str | None, typer.Option(help="Only checks allowed by this grant.")] = None,
    denied: Annotated[bool, typer.Option("--denied", help="Only denied checks.")] = False,
    since: SinceOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which agent performed which check, on which resource, under which grant."""
    try:
        records = load_records(cli_settings(), file=file, since=time_option(since))
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    forms = _stored_forms(resource)
    found: list[AuditRecord] = [
        r for r in records
        if any(matches(r, resource=f, scope=scope, agent=agent, grant=grant) for f in forms)
        and (not denied or r.outcome == "denied")]
    if as_json:
        print_json([{"at": stamp(r.occurred_at), "agent_id": r.agent_id, "outcome": r.outcome,
                     "grant_id": r.subject_id or None, "check": r.inputs.get("check"),
                     "audit_id": r.audit_id} for r in found])
        return
    if not found:
        raise fail("the audit holds no check that matches",
                   "enforcement points report checks with a UsageReporter; widen --since")
    for r in found:
        check = r.inputs.get("check")
        what = check if isinstance(check, dict) else {}
        out.print(f"{stamp(r.occurred_at)} {r.agent_id or '-':<18} {r.outcome:<8} "
                  f"{escape(str(what.get('scope', '?')))} at {escape(str(what.get('service')))} "
                  f"grant {escape(r.subject_id or '-')}", highlight=False)
