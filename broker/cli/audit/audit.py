"""`permbroker audit ...`: tail, verify, export, replay, timeline, hash, keys, seal. L3 (Typer).

Imports broker (core, adapters), schemas. Reads the sealed audit topic (``permbroker.audit``) or
an export file; nothing here writes to Redis or to a lifecycle topic. ``tail`` reads committed
sealer transactions only (read_committed). ``verify`` and ``replay --check`` exit 1 when they
find a problem, naming the record that shows it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from confluent_kafka import KafkaException
from rich.markup import escape

from broker.adapters.audit import check as audit_check
from broker.adapters.audit import keys as audit_keys
from broker.adapters.audit import log as audit_log
from broker.adapters.kafka.edge import Record
from broker.adapters.kafka.follow import Follower
from broker.adapters.kafka.jwks import JwksView
from broker.audit import replay as audit_replay
from broker.audit.baselines import baselines_as_of
from broker.audit.chain import is_digest
from broker.audit.redact import DEFAULT_FIELDS, FREE_TEXT_FIELDS, hmac_value
from broker.audit.views import grants_as_of, quarantines_as_of, timeline
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.output import (
    JsonOpt,
    err,
    fail,
    out,
    parse_time,
    print_json,
    stamp,
    time_option,
    until,
)
from broker.cli.scope import Scope, cli_scope, narrowed, not_theirs
from broker.config import Settings
from broker.errors import BrokerError
from broker.policy import Policy, load_policy
from schemas import topics
from schemas.events import MAX_REQUESTED_DURATION_S, AuditRecord

audit_app = typer.Typer(help="Read, verify, export and replay the audit stream.",
                        no_args_is_help=True)
audit_keys_app = typer.Typer(help="The audit's HMAC and signing keys.", no_args_is_help=True)

FileOpt = Annotated[Path | None, typer.Option(
    "--file", help="Read an export (audit export --format jsonl) instead of the topic.")]
SinceOpt = Annotated[str | None, typer.Option(help="From this time (ISO 8601, or '1h ago').")]
UntilOpt = Annotated[str | None, typer.Option(help="Up to this time (exclusive).")]
KafkaHint = "is Kafka up and the topic there? permbroker stack status"


def _topic() -> str:
    """The sealed audit this CLI reads: a tenant's operator user reads its tenant's copy."""
    return topics.audit_for(cli_settings().kafka_username or "").name


def _scopes(rec: AuditRecord) -> set[str]:
    found: set[str] = set()
    for key in ("request", "decision", "event"):
        part = rec.inputs.get(key)
        if isinstance(part, dict):
            for field in ("scopes", "granted_scopes"):
                value = part.get(field)
                if isinstance(value, list):
                    found.update(str(v) for v in value)
    return found


def _wanted(rec: AuditRecord, agent: str | None, kind: str | None, scope: str | None) -> bool:
    return ((agent is None or rec.agent_id == agent) and (kind is None or rec.kind == kind)
            and (scope is None or scope in _scopes(rec)))


def _show(rec: AuditRecord, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(rec.model_dump_json() + "\n")
        return
    where = f"p{rec.chain.partition}/{rec.chain.seq}" if rec.chain else ""
    out.print(
        f"{rec.occurred_at:%H:%M:%S.%f}"[:-3] + f"Z {rec.kind:<20} {rec.agent_id or '-':<18} "
        f"{rec.outcome:<8} {escape('; '.join(rec.reasons)[:90])} "
        f"[dim]{escape(', '.join(rec.rules))} {where}[/]",
        highlight=False,
    )


@audit_app.command("tail")
def tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following.")] = False,
    agent: Annotated[str | None, typer.Option(help="Only this agent.")] = None,
    kind: Annotated[str | None, typer.Option(
        help="Only this kind (escalation.decided, risk.observed, grant.revoked, ...).")] = None,
    about: Annotated[str | None, typer.Option(
        "--scope", help="Only records about this scope.")] = None,
    since: Annotated[str | None, typer.Option(
        help="From this time (ISO 8601, or '10m ago') instead of the last records.")] = None,
    last: Annotated[int, typer.Option(min=0, help="How many recent entries per partition.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Print the sealed audit records from a time or the last ones, up to what the topic holds
    now (and follow new ones with -f); an operator scoped to tenants sees records about its
    tenants' agents only."""
    settings, scope = cli_settings(), cli_scope()
    kafka = cli_kafka()
    printer = _Printer(lambda r: _wanted(r, agent, kind, about) and scope.sees(r.agent_id),
                       as_json)
    view: JwksView | None = None
    follower: Follower | None = None
    try:
        view = JwksView.from_settings(settings, kafka)  # only what the broker sealed is shown
        start = time_option(since)
        follower = Follower(kafka, _topic(), printer, trust=view.trust,
                            reader="audit-tail", name="permbroker-audit-tail",
                            start=last if start is None else start)
        _await_tail(follower, printer, follow)
    except (BrokerError, KafkaException) as exc:
        raise fail(exc, "is Kafka up? permbroker stack status") from exc
    except KeyboardInterrupt:
        pass
    finally:
        if follower is not None:
            follower.close()
        if view is not None:
            view.close()


class _Printer:
    """Prints the sealed records a tail wants, in the follower's thread; a failure to print (a
    closed pipe) is kept for the command's thread to raise."""

    def __init__(self, wanted: Callable[[AuditRecord], bool], as_json: bool) -> None:
        self._wanted, self._as_json = wanted, as_json
        self.broken: Exception | None = None

    def __call__(self, record: Record) -> None:
        rec = record.event
        if self.broken is None and isinstance(rec, AuditRecord) and self._wanted(rec):
            try:
                _show(rec, self._as_json)
            except Exception as exc:  # noqa: BLE001 - raised again by the command's thread
                self.broken = exc


def _await_tail(follower: Follower, printer: _Printer, follow: bool) -> None:
    """Until what the topic held at the start is shown (with -f: until interrupted)."""
    while True:
        read = follower.wait_ready(0.2)
        if printer.broken is not None:
            raise printer.broken
        if follower.errors.refused:
            raise fail(follower.errors.refused, "give the operator's Kafka user READ on it: "
                       "permbroker kafka acls apply")
        if read and not follow:
            return
        if read:
            time.sleep(0.2)


def load_records(settings: Settings, *, file: Path | None = None,
                 since: datetime | None = None) -> list[AuditRecord]:
    """Every parseable sealed record the broker signed (from the topic, or an export), in log
    order: an entry whose signature does not verify is left out, like one that does not parse."""
    if file is not None:  # an export: its integrity is the chain's (permbroker audit verify)
        stored = list(audit_log.read_jsonl(file))
    else:
        stored = read_trusted(lambda t: list(audit_log.read_topic(cli_kafka(), _topic(),
                                                                   since=since, trust=t)))
    records, bad = [], 0
    for s in stored:
        if s.withheld:  # another tenant's entry in a tenant's export: not a record of ours
            continue
        try:
            records.append(s.record())
        except BrokerError:
            bad += 1
    if bad:
        err.print(f"[yellow]{bad} entr(y/ies) not signed by the broker or not parseable were "
                  "left out; run "
                  "permbroker audit verify[/]")
    return records


@audit_app.command("verify")
def verify(
    topic: Annotated[str | None, typer.Option(help="Verify this topic (e.g. a copy).")] = None,
    file: FileOpt = None,
    public_key: Annotated[list[Path] | None, typer.Option(
        help="Public key(s) of the digests (default: the configured one).")] = None,
    complete: Annotated[bool, typer.Option(
        help="Also fail on entries not yet sealed by a digest, and on sealer lag.")] = False,
    wait: Annotated[float, typer.Option(
        help="Wait up to this many seconds for the sealer to chain and sign everything.")] = 0.0,
    as_json: JsonOpt = False,
) -> None:
    """Check every partition's hash chain, sequence and signed digests; name the first break."""
    settings = cli_settings()
    keys = audit_check.public_key_files(settings, public_key or [])
    try:
        if file is not None:
            result = audit_check.verify_file(file, keys, complete=complete)
        elif wait > 0 and topic is None:
            result = read_trusted(lambda t: audit_check.wait_sealed(cli_kafka(), keys, wait,
                                                                    topic=_topic(), trust=t))
        else:
            result = read_trusted(lambda t: audit_check.verify_topic(
                cli_kafka(), keys, complete=complete, trust=t, topic=topic or _topic()))
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    if as_json:
        print_json(result.as_dict())
    else:
        _print_verification(result)
    raise typer.Exit(0 if result.ok else 1)


def _print_verification(result: audit_check.Verification) -> None:
    for c in result.chains.values():
        span = f"seq {c.first_seq}..{c.last_seq}" if c.entries else "empty"
        signed = (f"signed through seq {c.sealed_through}" if c.sealed_through is not None
                  else "no digest yet")
        wait = f"; {c.unsealed} await the next digest" if c.unsealed else ""
        out.print(f"partition {c.partition}: {c.entries} entries ({span}), {c.digests} digests, "
                  f"{signed}{wait}", highlight=False)
    for note in result.notes:
        out.print(f"[dim]note: {escape(note)}[/]", highlight=False)
    for partition, lag in result.lag.items():
        out.print(f"[yellow]partition {partition}: {lag} raw record(s) not sealed yet[/]")
    for problem in result.problems:
        out.print(f"[bold red]BROKEN[/] {escape(problem)}", highlight=False)
    verdict = ("[green]OK[/]" if result.ok
               else f"[bold red]FAILED[/] ({len(result.problems)} problem(s))")
    out.print(f"{verdict}: {len(result.chains)} chain(s) of {escape(result.source)}",
              highlight=False)


@audit_app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", help="jsonl (verifiable) or csv.")] = "jsonl",
    since: SinceOpt = None,
    until_: Annotated[str | None, typer.Option("--until", help="Up to this time (exclusive).")]
    = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
    tenant: Annotated[str | None, typer.Option(
        help="Only this tenant's records in full (the others as their chain links).")] = None,
) -> None:
    """Export the sealed audit for a compliance review: the contiguous entries sealed in range.

    With --tenant (and always for an operator scoped to tenants) the records about other
    tenants' agents are withheld: each is written as its chain link only, so the export still
    verifies (audit verify --file) as a cut of the whole chain with nothing dropped."""
    if fmt not in ("jsonl", "csv"):
        raise fail(f"--format {fmt!r} is not supported", "use jsonl or csv")
    scope = narrowed(cli_scope(), tenant)
    start, end = time_option(since), time_option(until_)
    stream = audit_log.until(audit_log.read_topic(cli_kafka(), _topic(), since=start), end)
    try:
        count = _export(stream, fmt, output, scope)
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    err.print(f"exported {count} entr(y/ies) as {fmt}" + (f" to {output}" if output else "")
              + ("" if scope.everything else
                 f", those of tenant(s) {', '.join(sorted(scope.tenants or ()))} in full"))


def _export(stream: Iterable[audit_log.Stored], fmt: str, output: Path | None,
            scope: Scope) -> int:
    def shown(entry: dict[str, Any]) -> bool:  # digests carry no record: always shown
        return scope.everything or is_digest(entry) or scope.sees(entry.get("agent_id"))

    def write(f: IO[str]) -> int:
        if fmt == "jsonl":
            return audit_log.write_jsonl(stream, f, shown)
        return audit_log.write_csv((s for s in stream
                                    if shown(json.loads(s.entry.value or b"{}"))), f)

    if output is None:
        return write(sys.stdout)
    with output.open("w", encoding="utf-8", newline="") as f:
        return write(f)


def _policies(settings: Settings, records: list[AuditRecord], paths: list[Path],
              from_topic: bool) -> dict[str, Policy]:
    """Revisions recorded in these records (and anywhere on the topic), plus bundles given."""
    policies = audit_replay.policies_in(records)
    if from_topic:  # policy.loaded records may predate the window: find them by their bytes
        signed = read_trusted(lambda t: list(audit_log.read_topic(cli_kafka(), _topic(),
                                                                   trust=t)))
        loaded = (s.record() for s in signed if s.refusal is None
                  and b'"kind":"policy.loaded"' in (s.entry.value or b""))
        policies.update(audit_replay.policies_in(loaded))
    for path in paths:
        policy = load_policy(path)
        policies[policy.revision] = policy
    return policies


@audit_app.command("replay")
def replay(
    as_of: Annotated[str | None, typer.Option(
        "--as-of", help="List the grants and baselines active at this instant.")] = None,
    check: Annotated[bool, typer.Option(
        help="Decide every recorded request again with its recorded revision; report drift.")]
    = False,
    since: SinceOpt = None,
    until_: UntilOpt = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent (with --as-of).")] = None,
    policy: Annotated[list[Path] | None, typer.Option(
        help="A bundle of a revision the log does not hold (repeatable).")] = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild who could do what at a past instant, or check every decision reproduces."""
    if (as_of is None) == (not check):
        raise fail("say what to replay", "pass --as-of TIME (grants then) or --check (drift)")
    settings, scope = cli_settings(), cli_scope()
    at = parse_time(as_of) if as_of else None
    start = time_option(since)
    # A grant active at `at` was decided at most a week (the longest request) before it.
    lookback = at - timedelta(seconds=MAX_REQUESTED_DURATION_S + 3600) if at else start
    try:
        records = scope.keep(load_records(settings, file=file, since=lookback),
                             lambda r: r.agent_id)
        if at is not None:
            _print_as_of(records, at, agent, as_json)
            return
        policies = _policies(settings, records, policy or [], from_topic=file is None)
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    _check(records, policies, start, time_option(until_), as_json)


def _print_as_of(records: list[AuditRecord], at: datetime, agent: str | None,
                 as_json: bool) -> None:
    grants = [g for g in grants_as_of(records, at) if agent is None or g.agent_id == agent]
    barred = [q for q in quarantines_as_of(records, at) if agent is None or q.agent_id == agent]
    held = [b for b in baselines_as_of(records, at) if agent is None or b.agent_id == agent]
    if as_json:
        print_json({"as_of": at.isoformat(),
                    "grants": [{**g.__dict__, "ref": str(g.ref)} for g in grants],
                    "quarantined": [{**q.__dict__, "ref": str(q.ref)} for q in barred],
                    "baselines": [{**b.__dict__, "ref": str(b.ref)} for b in held]})
        return
    out.print(f"as of {stamp(at)}: {len(grants)} active grant(s)", highlight=False)
    for g in grants:
        out.print(f"  {g.agent_id} may {', '.join(g.scopes)} on "
                  f"{', '.join(g.resources) or 'any resource'}", highlight=False)
        out.print(f"    until {until(g.ends_at, at)} ({g.ended_by}); grant {g.grant_id}; "
                  f"rules {', '.join(g.rules)}; issued {stamp(g.issued_at)}; {g.ref}"
                  + (f"; delegated from grant {g.parent_grant_id}" if g.parent_grant_id else ""),
                  highlight=False)
    for q in barred:
        out.print(f"  {q.agent_id} quarantined by {q.rule} until {until(q.until, at)}",
                  highlight=False)
    for b in held:
        out.print(f"  {b.agent_id} baseline {', '.join(b.scopes) or 'none'} on any resource "
                  f"(standing, class {b.agent_class}, registry revision {b.registry_revision}; "
                  f"{b.ref})", highlight=False)


def _check(records: list[AuditRecord], policies: dict[str, Policy], since: datetime | None,
           end: datetime | None, as_json: bool) -> None:
    report = audit_replay.check(records, policies, since=since, until=end)
    warnings = [w for p in policies.values()
                for w in audit_replay.hmac_reads(p, DEFAULT_FIELDS + FREE_TEXT_FIELDS)]
    if as_json:
        print_json({"ok": report.ok, "decisions": report.decisions,
                    "reproduced": report.reproduced, "confirmations": report.confirmations,
                    "drift": [str(d) for d in report.drift],
                    "missing_revisions": report.missing_revisions,
                    "revisions": sorted(policies), "warnings": warnings})
    else:
        out.print(f"replayed {report.decisions} decision record(s): {report.reproduced} "
                  f"reproduced exactly, {report.confirmations} confirmation(s) of a decision "
                  f"stored earlier, {len(report.drift)} drift", highlight=False)
        for d in report.drift:
            out.print(f"[bold red]DRIFT[/] {escape(str(d))}", highlight=False)
        for rev, n in report.missing_revisions.items():
            err.print(f"[yellow]{n} decision(s) of revision {rev} not replayed: the log does not "
                      "hold that bundle; pass --policy DIR of that revision[/]")
        for w in warnings:
            err.print(f"[yellow]warning: {escape(w)}[/]")
    raise typer.Exit(1 if report.drift else 2 if report.missing_revisions else 0)


@audit_app.command("timeline")
def agent_timeline(
    agent: Annotated[str, typer.Option(help="The agent whose story to tell.")],
    since: SinceOpt = None,
    file: FileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything the audit says about one agent, in order."""
    settings, scope = cli_settings(), cli_scope()
    if not scope.sees(agent):
        raise fail(not_theirs(scope, agent), "permbroker agents list")
    try:
        records = load_records(settings, file=file, since=time_option(since))
    except BrokerError as exc:
        raise fail(exc, KafkaHint) from exc
    story = timeline(records, agent)
    if as_json:
        print_json([{**m.__dict__, "ref": str(m.ref)} for m in story])
        return
    if not story:
        raise fail(f"the audit holds nothing about agent {agent}",
                   "check the id (permbroker audit tail) or widen --since")
    for m in story:
        at = f"{m.at.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}"[:-3] + "Z"  # ms: events are close
        out.print(f"{at} {m.kind:<20} {escape(m.text)} "
                  f"[dim]{escape(str(m.ref))}[/]", highlight=False)


@audit_app.command("hash")
def hash_value(value: Annotated[str, typer.Argument(help="The clear value to look for.")]) -> None:
    """The HMAC the audit stores for a sensitive value: search the audit for it."""
    try:
        key = audit_keys.load_hmac_key(cli_settings())
    except BrokerError as exc:
        raise fail(exc) from exc
    out.print(hmac_value(key, value), highlight=False)


@audit_keys_app.command("init")
def keys_init() -> None:
    """Create the audit keys that are missing (never overwrites, never prints a secret)."""
    settings = cli_settings()
    created = audit_keys.ensure_keys(settings)
    for path in created:
        out.print(f"created {path}", highlight=False)
    keys = audit_keys.load_keys(settings)
    out.print(f"audit keys in {audit_keys.key_dir(settings)}; signing key id {keys.key_id}",
              highlight=False)


@audit_app.command("seal")
def seal() -> None:
    """Run the audit sealer alone (the same as permbroker sealer)."""
    from broker.cli.ops.sealer import sealer

    sealer()
