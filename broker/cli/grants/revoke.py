"""``permbroker revoke``: revoke by selector, with a dry run. L3: imports broker and schemas.

``permbroker revoke --model-version 3.2 --dry-run --json`` lists the agents and grants (absolute
expiry, time left) the selector names; without ``--dry-run`` (and with ``--reason``) it revokes
exactly that set in one operator-signed, audited operation and prints what the workers revoked.
``permbroker agents revoke AGENT`` is the same for one agent, and then waits (a bounded time) for
the signed acknowledgements of the live enforcement points that read the agent's tenant's grants
and prints the propagation.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from broker.adapters.crypto.keystore import load_operator
from broker.cli.context import cli_kafka, cli_settings, trusted
from broker.cli.output import JsonOpt, err, fail, out, print_json, until
from broker.errors import BrokerError
from broker.grants.selection import Selection, Selector, parse_labels
from broker.identity.tenants import DEFAULT_TENANT
from broker.sdk.operator.propagation import AckWatcher
from broker.sdk.operator.selector import plan, revoke_selected

revoke_app = typer.Typer()


@revoke_app.command("revoke")
def revoke(
    agent: Annotated[str | None, typer.Option(help="This agent id.")] = None,
    agent_class: Annotated[str | None, typer.Option(help="Agents of this class.")] = None,
    model_version: Annotated[str | None, typer.Option(help="Agents on this model version.")] = None,
    tenant: Annotated[str | None, typer.Option(help="Agents of this tenant.")] = None,
    owner: Annotated[str | None, typer.Option(help="Agents of this owner.")] = None,
    case_id: Annotated[str | None, typer.Option(help="Agents holding a grant for this case.")
                       ] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value (repeatable).")] = None,
    reason: Annotated[str | None, typer.Option(help="Why (recorded in the audit).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, revoke nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Revoke every agent a selector names (all criteria must hold); --dry-run lists them."""
    try:
        selector = Selector(agent, agent_class, model_version, tenant, owner, case_id,
                            parse_labels(label or ()))
    except ValueError as exc:
        raise fail(exc) from exc
    if not selector.criteria():
        raise fail("give at least one selector (--agent, --agent-class, --model-version, "
                   "--tenant, --owner, --case-id, --label)", code=2)
    settings = cli_settings()
    if not dry_run and not reason:
        raise fail("--reason is required to revoke (it is recorded in the audit)", code=2)
    try:
        with trusted() as trust:
            if dry_run:
                _show(plan(settings, cli_kafka(), selector, trust), as_json, dry=True)
                return
            principal, _key = load_operator(settings.key_path("operator"))
            done = revoke_selected(settings, cli_kafka(), selector, reason or "",
                                   operator=principal.split(":", 1)[1], trust=trust,
                                   timeout=settings.decision_timeout_s * 2)
    except BrokerError as exc:
        raise fail(exc, "are Kafka, Redis and a worker up, and is there an operator key? "
                   "(permbroker stack status; permbroker keys init)") from exc
    if as_json:
        print_json({**done.plan.as_json(), "operation_id": done.operation_id, "dry_run": False,
                    "revoked_grant_ids": list(done.revoked_grant_ids),
                    "revocations": [{"agent_id": r.agent_id, "signal_id": r.signal_id,
                                     "grant_ids": list(r.grant_ids),
                                     "consistency_token": r.consistency_token}
                                    for r in done.revocations]})
        return
    _show(done.plan, False, dry=False)
    out.print(f"operation {done.operation_id}: revoked {len(done.revoked_grant_ids)} grant(s) "
              f"of {len(done.revocations)} agent(s)")


def _show(selection: Selection, as_json: bool, *, dry: bool) -> None:
    if as_json:
        print_json({**selection.as_json(), "dry_run": dry})
        return
    if not selection.targets:
        err.print(f"no agent matches {selection.selector.describe()}")
        return
    table = Table("agent", "class", "model", "grant", "scopes", "expires")
    for t in selection.targets:
        p = t.profile
        first = (t.agent_id, p.agent_class if p else "?", p.model.version if p else "?")
        if not t.grants:
            table.add_row(*first, "-", "-", "-")
        for g in t.grants:
            table.add_row(*first, g.grant_id, "\n".join(g.scopes), until(g.expires_at,
                                                                        selection.at))
    out.print(table)
    out.print(("would revoke" if dry else "revoking") + f" {len(selection.grant_ids)} grant(s) "
              f"of {len(selection.targets)} agent(s) selected by {selection.selector.describe()}")


def agents_revoke(
    agent: Annotated[str, typer.Argument(help="The agent id (whole).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit).")],
    acks_wait: Annotated[float, typer.Option(
        "--acks-wait", min=0.0, help="Seconds to wait for enforcement points to acknowledge."
    )] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """Revoke every grant of an agent; waits for the worker, then for enforcement points' acks.

    Signed with this operator's key and audited as a selector revocation of one agent. Waits for
    the live enforcement points that read the agent's tenant's grants (another tenant's views
    never see it). Prints the grants revoked and each point that acknowledged, after how many ms.
    """
    settings = cli_settings()
    try:
        with trusted() as trust, AckWatcher(cli_kafka(), trust=trust) as acks:
            principal, _key = load_operator(settings.key_path("operator"))
            done = revoke_selected(settings, cli_kafka(), Selector(agent_id=agent), reason,
                                   operator=principal.split(":", 1)[1], trust=trust,
                                   timeout=settings.decision_timeout_s * 2)
            if not done.revocations:
                raise fail(f"no agent {agent} in the registry, the policy bundle or the grants",
                           "list agents: permbroker agents list")
            profile = done.plan.targets[0].profile
            tenant = profile.tenant if profile is not None else DEFAULT_TENANT
            seen = acks.wait(frozenset(r.signal_id for r in done.revocations), acks_wait, tenant)
            awaited = acks.awaited(tenant)
    except BrokerError as exc:
        raise fail(exc, "are Kafka, Redis and a worker up, and is there an operator key? "
                   "(permbroker stack status; permbroker keys init)") from exc
    grants = {g.grant_id: g for t in done.plan.targets for g in t.grants}
    rows = [{"grant_id": gid, "scopes": list(grants[gid].scopes) if gid in grants else [],
             "expires_at": grants[gid].expires_at.isoformat() if gid in grants else None}
            for gid in done.revoked_grant_ids]
    points = [{"enforcement_point": p.enforcement_point, "cause_event_id": p.cause_event_id,
               "applied_at": p.applied_at.isoformat(), "propagation_ms": round(p.seconds * 1000)}
              for p in seen]
    if as_json:
        r = done.revocations[0]
        print_json({"agent_id": agent, "operation_id": done.operation_id,
                    "signal_id": r.signal_id, "revoked_at": r.revoked_at.isoformat(),
                    "consistency_token": r.consistency_token, "revoked": rows,
                    "tenant": tenant, "awaited": awaited, "acknowledged": points,
                    "acks_wait_s": acks_wait})
        return
    _show_agent_revocation(agent, done.revocations[0].revoked_at, rows, points, acks_wait)
    missing = sorted(set(awaited) - {p["enforcement_point"] for p in points})
    if missing:
        out.print(Text(f"  not acknowledged within {acks_wait:g}s by: {', '.join(missing)}"),
                  soft_wrap=True)


def _show_agent_revocation(agent: str, at: datetime, rows: list[dict[str, Any]],
                           points: list[dict[str, Any]], waited: float) -> None:
    now = datetime.now(UTC)
    out.print(Text(f"revoked {len(rows)} grant(s) of {agent} at {until(at, now)}"),
              soft_wrap=True)
    for r in rows:
        expiry = until(datetime.fromisoformat(r["expires_at"]), now) if r["expires_at"] else "?"
        out.print(Text(f"  {r['grant_id']}  {', '.join(r['scopes'])}  (was to expire "
                       f"{expiry})"), soft_wrap=True)
    if not points:
        out.print(f"no enforcement point acknowledged within {waited:g}s")
    for p in points:
        out.print(Text(f"  acknowledged by {p['enforcement_point']} after "
                       f"{p['propagation_ms']} ms"), soft_wrap=True)
