"""`permbroker agents ...`: register agents, their status and keys. L3 (Typer + Rich).

Imports broker (adapters, sdk, policy, config) and schemas. Operator commands are signed with the
operator key (``PERMBROKER_OPERATOR_KEY_FILE``) and wait for the broker's answer; reads come from
the compacted agents topic (the record). ``keys`` and ``inventory`` have modules of their own
(``broker.cli.identity.keys``, ``broker.cli.identity.inventory``).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.registry_view import Registry, read_registry
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.output import fail, until
from broker.cli.scope import cli_scope, not_theirs
from broker.config import Settings
from broker.errors import BrokerError, PolicyError
from broker.policy import load_policy
from broker.policy.fields import parse_duration
from broker.sdk.operator.client import OperatorClient
from schemas.events import AgentProfile, AgentRecord, ModelInfo, PublicJwk

agents_app = typer.Typer(help="Register agents and manage their status and keys.",
                         no_args_is_help=True)
out = Console()
err = Console(stderr=True)
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AgentArg = Annotated[str, typer.Argument(help="The agent id.")]
ReasonOpt = Annotated[str, typer.Option(help="Why (recorded in the audit).")]


_fail = fail  # one error format for every command (re-exported to keys and services)


def _json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _ago(when: datetime | None, now: datetime) -> str:
    return until(when, now, never="never")


def _operator(settings: Settings) -> OperatorClient:
    try:
        return OperatorClient(settings, cli_kafka())
    except BrokerError as exc:
        raise _fail(exc, "create the operator key with `permbroker keys init`") from exc


def _read_registry() -> Registry:
    """The registry as the broker signed it (records refused by the chain of trust left out)."""
    return read_trusted(lambda trust: read_registry(cli_kafka(), trust))


def _run(action: Any) -> Any:
    try:
        return action()
    except BrokerError as exc:
        raise _fail(exc, "is a worker running? (permbroker worker); see "
                    "`permbroker audit tail --kind identity.rejected`") from exc


# --- profiles -------------------------------------------------------------------------------

def parse_model(text: str) -> ModelInfo:
    """``name:version[@digest]`` -> ModelInfo."""
    name, _, rest = text.partition(":")
    version, _, digest = rest.partition("@")
    if not name or not version:
        raise typer.BadParameter(f"{text!r}: use name:version or name:version@digest")
    return ModelInfo(name=name, version=version, digest=digest)


def _profile(agent: str, base: AgentProfile | None, changes: dict[str, Any]) -> AgentProfile:
    fields = {k: v for k, v in changes.items() if v is not None}
    if base is None:
        missing = [f for f in ("agent_class", "owner", "model") if f not in fields]
        if missing:
            raise _fail(f"a new agent needs --{', --'.join(m.replace('_', '-') for m in missing)}",
                        "or take the profile from a bundle: --from-bundle policies/fraud")
        return AgentProfile.model_validate({"agent_id": agent, **fields})
    return base.model_copy(update={"baseline": (), "ceiling": (), **fields})


def _bundle_profile(agent: str, bundle: Path | None) -> AgentProfile | None:
    if bundle is None:
        return None
    try:
        profile = load_policy(bundle).agent(agent)
    except PolicyError as exc:
        raise _fail(f"invalid bundle: {exc}") from exc
    if profile is None:
        raise _fail(f"agent {agent} is not in the Agents documents of {bundle}")
    return profile


ClassOpt = Annotated[str | None, typer.Option("--class", help="The agent class (policy).")]
OwnerOpt = Annotated[str | None, typer.Option(help="Who is accountable for the agent.")]
ModelOpt = Annotated[str | None, typer.Option(help="Model as name:version[@digest].")]
TrainOpt = Annotated[str | None, typer.Option("--training-data", help="Training-data reference.")]
ThresholdOpt = Annotated[float | None, typer.Option(help="Confidence threshold, 0..1.")]
TenantOpt = Annotated[str | None, typer.Option(help="Tenant.")]


def _changes(cls: str | None, owner: str | None, model: str | None, training: str | None,
             threshold: float | None, tenant: str | None) -> dict[str, Any]:
    return {"agent_class": cls, "owner": owner, "model": parse_model(model) if model else None,
            "training_data_ref": training, "confidence_threshold": threshold, "tenant": tenant}


# --- agents ---------------------------------------------------------------------------------

@agents_app.command("keygen")
def agents_keygen(
    agent: Annotated[str, typer.Option(help="The agent id the key is for.")],
    alg: Annotated[str, typer.Option(help="EdDSA (Ed25519) or ES256 (P-256).")] = "EdDSA",
    as_json: JsonOpt = False,
) -> None:
    """Create the agent's key pair in its key store; print the public key to register."""
    store = AgentKeyStore.from_settings(cli_settings())
    try:
        keys = store.generate(agent, alg=alg)
    except BrokerError as exc:
        raise _fail(exc) from exc
    jwk = keys.current.jwk.model_dump(mode="json", exclude_none=True)
    if as_json:
        _json({"agent_id": agent, "kid": keys.current.kid, "public_jwk": jwk,
               "key_file": str(store.path(agent))})
        return
    out.print(f"key {keys.current.kid} for {agent} in {store.path(agent)} (mode 0600)")
    out.print(json.dumps(jwk))


@agents_app.command("register")
def agents_register(
    agent: Annotated[str, typer.Option(help="The agent id.")],
    agent_class: ClassOpt = None, owner: OwnerOpt = None, model: ModelOpt = None,
    training_data: TrainOpt = None, threshold: ThresholdOpt = None, tenant: TenantOpt = None,
    public_key: Annotated[Path | None, typer.Option(help="The agent's public JWK (file).")] = None,
    generate_key: Annotated[bool, typer.Option(
        help="Dev: create the agent's key here too (it then lives on this machine).")] = False,
    from_bundle: Annotated[Path | None, typer.Option(
        help="Take the profile from a policy bundle's Agents documents (a seed).")] = None,
    reason: ReasonOpt = "registered by an operator",
    as_json: JsonOpt = False,
) -> None:
    """Register an agent: its profile and AI attributes, and the public key it signs with."""
    settings = cli_settings()
    profile = _profile(agent, _bundle_profile(agent, from_bundle),
                       _changes(agent_class, owner, model, training_data, threshold, tenant))
    if generate_key == (public_key is not None):
        raise _fail("give exactly one of --public-key FILE and --generate-key")
    if public_key is not None:
        jwk = PublicJwk.model_validate(json.loads(public_key.read_text("utf-8")))
    else:
        store = AgentKeyStore.from_settings(settings)
        jwk = (store.load(agent) if store.exists(agent) else store.generate(agent)).current.jwk
    with _operator(settings) as op:
        answer = _run(lambda: op.register(profile, jwk, reason=reason))
    if as_json:
        _json(answer.model_dump(mode="json"))
    else:
        out.print(f"[green]registered[/] {agent}: {escape(answer.reason)}")


@agents_app.command("enroll")
def agents_enroll(
    agent: Annotated[str, typer.Option(help="The agent id.")],
    agent_class: ClassOpt = None, owner: OwnerOpt = None, model: ModelOpt = None,
    training_data: TrainOpt = None, threshold: ThresholdOpt = None, tenant: TenantOpt = None,
    ttl: Annotated[str, typer.Option(help="How long the token is valid: 15m, 1h.")] = "1h",
    from_bundle: Annotated[Path | None, typer.Option(help="Profile from a bundle.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """An enrollment token: the agent registers its own key with it (docs/protocol.md)."""
    seconds = parse_duration(ttl)
    if seconds is None:
        raise _fail(f"--ttl {ttl!r} is not a duration", "use e.g. 15m, 1h")
    profile = _profile(agent, _bundle_profile(agent, from_bundle),
                       _changes(agent_class, owner, model, training_data, threshold, tenant))
    with _operator(cli_settings()) as op:
        token, exp = op.enroll(profile, ttl_s=seconds)
    if as_json:
        _json({"agent_id": agent, "enrollment_token": token, "expires_at": exp.isoformat()})
    else:
        out.print(f"enrollment token for {agent}, valid until {_ago(exp, datetime.now(UTC))}:")
        sys.stdout.write(token + "\n")


def _record_row(r: AgentRecord) -> dict[str, Any]:
    return {**r.model_dump(mode="json"), "active_kids": [k.kid for k in r.keys
                                                         if k.status != "revoked"]}


@agents_app.command("list")
def agents_list(as_json: JsonOpt = False) -> None:
    """Every registered agent (from the registry topic); an operator scoped to tenants sees
    its tenants' agents only."""
    records = cli_scope().keep(_run(_read_registry).records(), lambda r: r.agent_id)
    if as_json:
        _json([_record_row(r) for r in records])
        return
    now = datetime.now(UTC)
    table = Table("agent", "class", "owner", "model", "status", "keys", "changed")
    for r in records:
        m = r.profile.model
        table.add_row(r.agent_id, r.profile.agent_class, escape(r.profile.owner),
                      f"{m.name} {m.version}", r.status,
                      ", ".join(f"{k.kid[:8]}…({k.status})" for k in r.keys),
                      f"{r.change} {_ago(r.changed_at, now)}")
    out.print(table if records else "no agents registered")


@agents_app.command("show")
def agents_show(agent: AgentArg, as_json: JsonOpt = False) -> None:
    """One agent's record: profile, AI attributes, status, keys and their validity."""
    scope = cli_scope()
    if not scope.sees(agent):
        raise _fail(not_theirs(scope, agent), "permbroker agents list")
    record = _run(_read_registry).get(agent)
    if record is None:
        raise _fail(f"agent {agent} is not registered", "permbroker agents list")
    if as_json:
        _json(_record_row(record))
        return
    now = datetime.now(UTC)
    for key, value in record.profile.model_dump(mode="json", exclude={"baseline",
                                                                      "ceiling"}).items():
        out.print(f"[bold]{key}[/]: {value}")
    out.print(f"[bold]status[/]: {record.status} ({record.change} by {record.changed_by} "
              f"{_ago(record.changed_at, now)}{': ' + record.reason if record.reason else ''})")
    for k in record.keys:
        until = f", valid until {_ago(k.not_after, now)}" if k.not_after else ""
        out.print(f"[bold]key[/] {k.kid} {k.jwk.crv} {k.status}, added {_ago(k.added_at, now)}"
                  f"{until}")


@agents_app.command("update")
def agents_update(
    agent: AgentArg, reason: ReasonOpt,
    agent_class: ClassOpt = None, owner: OwnerOpt = None, model: ModelOpt = None,
    training_data: TrainOpt = None, threshold: ThresholdOpt = None, tenant: TenantOpt = None,
) -> None:
    """Change an agent's profile; a new model version or digest revokes grants per policy."""
    settings = cli_settings()
    record = _run(_read_registry).get(agent)
    if record is None:
        raise _fail(f"agent {agent} is not registered", "permbroker agents register")
    profile = _profile(agent, record.profile,
                       _changes(agent_class, owner, model, training_data, threshold, tenant))
    with _operator(settings) as op:
        answer = _run(lambda: op.update(profile, reason=reason))
    out.print(f"[green]updated[/] {agent}: {escape(answer.reason)}")


def _simple(action: str, agent: str, reason: str, **fields: Any) -> None:
    with _operator(cli_settings()) as op:
        method = getattr(op, action)
        answer = _run(lambda: method(agent, reason=reason, **fields))
    out.print(f"[green]{action.replace('_', ' ')}[/] {agent}: {escape(answer.reason)}")


@agents_app.command("suspend")
def agents_suspend(agent: AgentArg, reason: ReasonOpt) -> None:
    """Suspend an agent: every grant is revoked; it may not act until resumed."""
    _simple("suspend", agent, reason)


@agents_app.command("resume")
def agents_resume(agent: AgentArg, reason: ReasonOpt) -> None:
    """Let a suspended or quarantined agent act again (revoked grants stay revoked)."""
    _simple("resume", agent, reason)


@agents_app.command("revoke-key")
def agents_revoke_key(
    agent: AgentArg, reason: ReasonOpt,
    kid: Annotated[str, typer.Option(help="The compromised key id.")],
) -> None:
    """Revoke a compromised key: the agent's grants are revoked and it is quarantined."""
    _simple("revoke_key", agent, reason, kid=kid)


@agents_app.command("decommission")
def agents_decommission(agent: AgentArg, reason: ReasonOpt) -> None:
    """Retire an agent: every grant revoked, every key retired, its baseline withdrawn; the
    record and the audit stay, and the id registers again only after ``agents reinstate``."""
    _simple("decommission", agent, reason)


@agents_app.command("renew")
def agents_renew(agent: AgentArg, reason: ReasonOpt) -> None:
    """Renew an agent's registration (under a policy's ``lifecycle.registration_ttl`` it lapses
    that long after it was made or last renewed)."""
    _simple("renew", agent, reason)


@agents_app.command("reinstate")
def agents_reinstate(
    agent: AgentArg, reason: ReasonOpt,
    public_key: Annotated[Path, typer.Option(help="The agent's new public JWK (file).")],
) -> None:
    """Bring a decommissioned agent id back with a new key (its old keys stay revoked)."""
    try:
        jwk = PublicJwk.model_validate(json.loads(public_key.read_text("utf-8")))
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read a public JWK from {public_key}: {exc}") from exc
    _simple("reinstate", agent, reason, key=jwk)
