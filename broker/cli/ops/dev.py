"""``permbroker dev``: everything a developer needs locally, in one command. L3: imports demo.dev.

Also ``make dev``. Stops everything it started on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from broker.cli.context import cli_settings
from broker.demo.dev import example_port, run_dev

dev_app = typer.Typer()
_err = Console(stderr=True, highlight=False, soft_wrap=True)
_out = Console(highlight=False, soft_wrap=True)


def _say(message: str) -> None:
    _err.print(f"[cyan]dev>[/] {escape(message)}")


def _show(commands: tuple[str, ...]) -> None:
    _out.print("\n[bold green]Ready.[/] In another terminal, from this directory, try:\n")
    for command in commands:
        _out.print(f"  {escape(command)}")
    _out.print("\nCtrl-C here stops everything.\n")


@dev_app.command()
def dev(
    port: Annotated[int | None, typer.Option(
        "--example-port", help="Port of the example payments service (default: "
        "PERMBROKER_EXAMPLE_PORT, else 8081).")] = None,
) -> None:
    """Start the local stack, a worker, the API and the example service until Ctrl-C."""
    code = run_dev(cli_settings(), _say, _show,
                   example_port=port if port is not None else example_port())
    raise typer.Exit(code)
