"""`permbroker stack up|down|status|env|compose-env`: local stack CLI. Imports typer, rich, stack.

Mounted into the main CLI as `permbroker stack`; also runs alone:
`python -m broker.cli.ops.stack up`.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from broker.adapters.crypto.keystore import ensure_identity_files
from broker.cli.context import cli_settings, use_settings
from broker.config import Settings
from broker.errors import ConfigError, StackError
from broker.stack import local as stack
from broker.stack import rediscluster, redisusers
from broker.stack.credentials import Credentials, credentials_file
from schemas.topics import ROLES, role_of

stack_app = typer.Typer(
    help="Local Apache Kafka (KRaft) + Redis as plain processes, no Docker needed.",
    no_args_is_help=True,
)
_out = Console()
_err = Console(stderr=True)


def _progress(message: str) -> None:
    _err.print(f"[cyan]>[/] {message}")


def _fail(action: str, exc: StackError) -> typer.Exit:
    _err.print(f"[bold red]stack {action} failed:[/] {exc}", markup=True, highlight=False)
    return typer.Exit(1)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[red]no[/]"


def _table(status: stack.StackStatus) -> Table:
    table = Table(title="permbroker local stack")
    for column in ("service", "pid", "running", "answering", "address", "log"):
        table.add_column(column)
    for service in (status.kafka, status.redis):
        table.add_row(service.name, str(service.pid or "-"), _yes(service.running),
                      _yes(service.answering), service.address, service.log)
    return table


@stack_app.command()
def up(
    install_tools: Annotated[bool, typer.Option(
        help="Install missing java/mvn/redis-server with apt-get (root on Debian only).",
    )] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for both services.")] = 120.0,
    redis_cluster: Annotated[bool, typer.Option(
        help="Also start a Redis Cluster (six redis-server processes: three masters, three "
        "replicas, on the Redis port + 100 and up) and print its URL as the grant store's.",
    )] = False,
) -> None:
    """Start Kafka and Redis (or reuse ours if running), then create the topics."""
    settings = cli_settings()
    redis_url = ""
    try:
        if install_tools:
            stack.ensure_tools(_progress)
        with _err.status("Starting the local stack ..."):
            status = stack.up(settings, progress=_progress, timeout=timeout)
            redis_url = _start_cluster(settings, timeout) if redis_cluster else status.redis_url
    except StackError as exc:
        raise _fail("up", exc) from exc
    for path in ensure_identity_files(settings):  # private keys: 0600, never printed
        _progress(f"Created {path}")
    _out.print(_table(status))
    _out.print(f"PERMBROKER_KAFKA_BOOTSTRAP={status.bootstrap}", highlight=False)
    _out.print(f"PERMBROKER_REDIS_URL={redis_url}", highlight=False)
    _out.print(f"Kafka and Redis users (one per role, the same password) in "
               f"{status.credentials}; a process's own: eval \"$(permbroker stack env --role "
               f"worker{' --redis-cluster' if redis_cluster else ''})\"", highlight=False)


def _cluster_port(settings: Settings) -> int:
    return settings.redis_port + 100


def _start_cluster(settings: Settings, timeout: float) -> str:
    """Start the stack's Redis Cluster unless it runs already; returns its URL."""
    root, port = settings.stack_dir / "redis-cluster", _cluster_port(settings)
    credentials = stack.credentials_of(settings)
    if not rediscluster.cluster_ok(port, credentials):
        rediscluster.up(root, port, _progress, timeout, credentials)
    return rediscluster.url(port)


@stack_app.command()
def down(
    wipe: Annotated[bool, typer.Option(help="Also delete Kafka's and Redis's data.")] = False,
) -> None:
    """Stop the processes `stack up` started (only those), optionally wiping their data."""
    try:
        settings = cli_settings()
        stopped = stack.down(settings, wipe=wipe)
        if rediscluster.down(settings.stack_dir / "redis-cluster", _cluster_port(settings),
                             wipe=wipe):
            stopped.append("redis-cluster")
    except StackError as exc:
        raise _fail("down", exc) from exc
    _out.print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing of ours was running.")
    if wipe:
        _out.print("Wiped the Kafka and Redis data dirs.")


@stack_app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Show each service: our PID, running, answering. Exit status 1 unless both answer."""
    try:
        current = stack.status(cli_settings())
    except StackError as exc:
        raise _fail("status", exc) from exc
    if as_json:
        typer.echo(json.dumps(current.to_dict(), indent=2))
    else:
        _out.print(_table(current))
    if not current.ready:
        raise typer.Exit(1)


@stack_app.command()
def env(
    role: Annotated[str, typer.Option(help=f"The role to connect as: {', '.join(ROLES)}, or "
                                      "a tenant's agent@<tenant>, service@<tenant> or "
                                      "operator@<tenant>.")],
    redis_cluster: Annotated[bool, typer.Option(
        help="The Redis URL of the stack's Redis Cluster (stack up --redis-cluster).")] = False,
) -> None:
    """Print `export PERMBROKER_KAFKA_*=...` lines: the stack's Kafka as one role's user, and
    `PERMBROKER_REDIS_URL` logging in as its Redis user (roles that use Redis)."""
    settings = cli_settings()
    try:
        found = Credentials.read(credentials_file(settings))
        if found is None:
            raise StackError(f"no Kafka users in {credentials_file(settings)}: run "
                             "permbroker stack up first")
        access = found.access(stack.admin_access(settings).anonymous(), role)
    except (ConfigError, StackError) as exc:
        _err.print(f"[bold red]stack env failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    env = access.env()
    if role_of(role)[0] in redisusers.RULES:
        env["PERMBROKER_REDIS_URL"] = rediscluster.url(_cluster_port(settings), found, role) \
            if redis_cluster else stack.redis_url(settings, role)
    for name, value in env.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@stack_app.command("compose-env")
def compose_env() -> None:
    """Write <stack_dir>/compose.env (0600): a password per Kafka user for docker-compose.yml.

    Kept once written: ``docker compose --env-file .stack/compose.env up`` reuses it.
    """
    path = cli_settings().stack_dir / "compose.env"
    if not path.is_file():
        users = Credentials.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"PB_KAFKA_{user.upper()}_PASSWORD={password}\n"
                         for user, password in users.passwords.items())
    _out.print(f"{path} (0600): docker compose --env-file {path} up --build", highlight=False)


if __name__ == "__main__":
    use_settings(Settings())  # read once, here, for the command (``cli_settings()``)
    stack_app(prog_name="permbroker stack")
