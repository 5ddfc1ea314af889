"""The docs site's generated reference pages: settings and CLI. L3: imports broker.cli, config.

``python -m broker.cli.reference`` writes ``docs/reference/configuration.md`` (from the
``Settings`` fields' descriptions) and ``docs/reference/cli.md`` (from the Typer app); the unit
tests fail when a committed page differs from what this module generates now.
"""

from __future__ import annotations

import html
import re
import sys
from pathlib import Path
from types import UnionType
from typing import Literal, Union, get_args, get_origin

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from typer.cli import get_docs_for_click
from typer.core import MARKUP_MODE_KEY
from typer.main import get_command

from broker.config import Settings

PAGES = Path(__file__).resolve().parents[2] / "docs" / "reference"
CONFIG_PAGE = PAGES / "configuration.md"
CLI_PAGE = PAGES / "cli.md"
_MODULE_PREFIX = re.compile(r"\b[a-z_]+(?:\.[a-z_]+)*\.(?=[A-Z])")  # typing.X, pathlib.Path

CONFIG_INTRO = """\
# Configuration reference

Every setting is read from the environment variable `PERMBROKER_<NAME>`, else from the config
file `permbroker.toml` (the key `<name>` in lower case; the file named by `PERMBROKER_CONFIG`,
else the one in `$XDG_CONFIG_HOME/permbroker/`; its relative paths are resolved against its
folder), else the default (`broker/config.py`). A value that does not parse or is out of range
stops the process with the setting named.

This page is generated from the settings' own descriptions by `python -m broker.cli.reference`;
a unit test fails when it differs from what the code says.

| variable | type | default | meaning |
|---|---|---|---|
"""

CLI_INTRO = """\
This page is generated from the command tree by `python -m broker.cli.reference`; a unit test
fails when it differs from what `permbroker --help` says. Every command reads the settings of
the [configuration reference](configuration.md).

"""


def _cell(text: str) -> str:
    """Table cell prose: one line, ``<`` shown as is, pipes escaped so they never split it."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def type_name(annotation: object) -> str:
    """``int``, ``Path or None``, ``'SASL_SSL' or 'PLAIN'``: a type as a reader spells it (no
    pipe: inside a code span of a table cell the two Markdown parsers would read it apart)."""
    args = get_args(annotation)
    if get_origin(annotation) in (Union, UnionType):
        return " or ".join(type_name(a) for a in args)
    if get_origin(annotation) is Literal:
        return " or ".join(repr(a) for a in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not args:
        return annotation.__name__
    return _MODULE_PREFIX.sub("", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as a reader would type it; one computed on this machine (a path under the
    data dir, the shipped bundle) is named by the description instead."""
    if field.is_required():
        return "(required)"
    if field.default_factory is not None:
        return "(computed)"
    value = field.get_default(call_default_factory=True)
    if value is None or value == "" or value == ():
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def rows(model: type[BaseModel], prefix: str) -> list[str]:
    """One table row per field; a field without a description is an error, not an empty cell."""
    out = []
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"setting {name} has no description: give its Field one")
        out.append(f"| `{prefix}{name.upper()}` | `{type_name(field.annotation)}` | "
                   f"{default_text(field)} | {_cell(field.description)} |")
    return out


def configuration_page() -> str:
    """The settings reference: one table row per field, in declaration order."""
    return CONFIG_INTRO + "\n".join(rows(Settings, "PERMBROKER_")) + "\n"


def cli_page() -> str:
    """The CLI reference, as ``typer ... utils docs`` writes it for the ``permbroker`` app."""
    from broker.cli.main import app  # the whole command tree: imported only when asked for

    command = get_command(app)
    ctx = typer.Context(command, info_name="permbroker")
    if getattr(app, "rich_markup_mode", None):
        ctx.ensure_object(dict)[MARKUP_MODE_KEY] = app.rich_markup_mode
    docs = get_docs_for_click(obj=command, ctx=ctx, name="permbroker", title="CLI reference")
    heading, _, body = docs.strip().partition("\n")
    return f"{heading}\n\n{CLI_INTRO}{body.strip()}\n"


def main() -> None:
    """Write both pages (run after changing a setting or a command)."""
    PAGES.mkdir(parents=True, exist_ok=True)
    for page, text in ((CONFIG_PAGE, configuration_page()), (CLI_PAGE, cli_page())):
        page.write_text(text, encoding="utf-8")
        sys.stdout.write(f"wrote {page}\n")


if __name__ == "__main__":
    main()
