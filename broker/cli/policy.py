"""`permbroker policy diff` (what-if on recorded requests), `test` (fixtures), `validate`. L3.

Imports typer, rich, broker (core, adapters through cli.audit), schemas. ``diff`` reads the audit
and the candidate bundle and writes nothing: no Redis, no Kafka topic, no grant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from broker.audit.redact import DEFAULT_FIELDS, FREE_TEXT_FIELDS
from broker.audit.replay import hmac_reads
from broker.audit.whatif import CATEGORIES, DiffReport, diff, summary
from broker.cli.audit.audit import FileOpt, KafkaHint, load_records
from broker.cli.context import cli_settings
from broker.cli.output import JsonOpt, err, fail, out, parse_time, print_json, time_option
from broker.errors import BrokerError, PolicyError
from broker.grants.policy_tests import run_suite
from broker.policy import load_policy

policy_app = typer.Typer(help="Work with policy bundles.", no_args_is_help=True)


@policy_app.command("diff")
def policy_diff(
    candidate: Annotated[Path, typer.Option(help="The candidate bundle (dir or file).")],
    since: Annotated[str, typer.Option(help="Replay requests decided since (ISO 8601, '1d').")],
    until_: Annotated[str | None, typer.Option("--until", help="Up to this time.")] = None,
    examples: Annotated[int, typer.Option(help="Examples shown per kind of change.")] = 5,
    fail_on_change: Annotated[bool, typer.Option(
        help="Exit 4 when any decision would change (for CI gates).")] = False,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Replay recorded requests through a candidate policy; report every decision it changes."""
    try:
        policy = load_policy(candidate)
    except PolicyError as exc:
        raise fail(f"the candidate does not load: {exc}", "permbroker policy validate PATH",
                   code=2) from exc
    start = parse_time(since)
    try:
        records = load_records(cli_settings(), file=file, since=start)
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    report = diff(records, policy, since=start, until=time_option(until_))
    warnings = hmac_reads(policy, DEFAULT_FIELDS + FREE_TEXT_FIELDS)
    if as_json:
        print_json(_as_dict(report, warnings))
    else:
        _print_diff(report, examples, warnings)
    raise typer.Exit(4 if fail_on_change and report.changes else 0)


def _as_dict(report: DiffReport, warnings: list[str]) -> dict[str, object]:
    return {
        "candidate": report.candidate, "profiles": report.profiles,
        "compared": report.compared, "unchanged": report.unchanged, "skipped": report.skipped,
        "changed": len(report.changes), "counts": report.counts, "warnings": warnings,
        "changes": [{"category": c.category, "request_id": c.request_id, "agent_id": c.agent_id,
                     "record": str(c.ref), "before": c.before.model_dump(mode="json"),
                     "after": c.after.model_dump(mode="json")} for c in report.changes],
    }


def _print_diff(report: DiffReport, examples: int, warnings: list[str]) -> None:
    out.print(f"candidate {escape(report.candidate)} ({report.profiles} agent profiles)",
              highlight=False)
    out.print(f"{report.compared} recorded decision(s) replayed: {len(report.changes)} would "
              f"change, {report.unchanged} unchanged ({report.skipped} not policy decisions "
              "or without inputs, skipped)", highlight=False)
    for name in CATEGORIES:
        changed = [c for c in report.changes if c.category == name]
        if not changed:
            continue
        out.print(f"\n[bold]{name}[/]: {len(changed)}", highlight=False)
        for c in changed[:examples]:
            out.print(f"  request {c.request_id} of {c.agent_id} ({escape(str(c.ref))})",
                      highlight=False)
            out.print(f"    recorded:  {escape(summary(c.before))}", highlight=False)
            out.print(f"    candidate: {escape(summary(c.after))}", highlight=False)
        if len(changed) > examples:
            out.print(f"  ... and {len(changed) - examples} more (--json lists all)")
    for w in warnings:
        err.print(f"[yellow]warning: {escape(w)}[/]")


@policy_app.command("test")
def policy_test(
    path: Annotated[Path, typer.Argument(help="A bundle (fixtures in its tests/) or a "
                                               "fixtures directory.")],
    as_json: JsonOpt = False,
) -> None:
    """Run a bundle's policy tests; exit 1 naming each failing fixture and the rules involved."""
    result = run_suite(path)
    if as_json:
        print_json({"ok": result.ok, "bundle": result.bundle, "revision": result.revision,
                    "errors": result.errors,
                    "cases": [{"file": c.file, "line": c.line, "name": c.name,
                               "passed": c.passed, "failures": list(c.failures),
                               "decided": c.decided} for c in result.cases]})
    else:
        for case in result.cases:
            mark = "[green]PASS[/]" if case.passed else "[bold red]FAIL[/]"
            out.print(f"{mark} {escape(str(case)[5:])}", highlight=False)
        for error in result.errors:  # the bundle or a fixture could not be read: on stderr
            err.print(f"[bold red]ERROR[/] {escape(error)}", highlight=False, soft_wrap=True)
        passed = sum(c.passed for c in result.cases)
        out.print(f"{passed}/{len(result.cases)} policy test(s) passed for {result.bundle} "
                  f"({result.revision or 'not loaded'})", highlight=False)
    raise typer.Exit(0 if result.ok else 1)


@policy_app.command("validate")
def policy_validate(path: Path, as_json: JsonOpt = False) -> None:
    """Load a policy bundle and report its revision, or the file, line and rule of each error."""
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        if as_json:
            print_json(
                {
                    "valid": False,
                    "file": exc.file,
                    "line": exc.line,
                    "rule": exc.rule,
                    "error": exc.message,
                    "column": exc.column,
                    "suggestion": exc.suggestion,
                }
            )
        else:
            err.print(f"[bold red]invalid:[/] {escape(str(exc))}")  # CEL has [brackets]
        raise typer.Exit(2) from exc
    agents = [a.agent_id for a in policy.agents()]
    if as_json:
        print_json(
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
