"""The generated reference pages are what the code says now (settings, commands).

Regenerate them with ``python -m broker.cli.reference`` after changing a setting or a command.
"""

from __future__ import annotations

import pytest

from broker.cli import reference
from broker.config import Settings

REGENERATE = "out of date: run `python -m broker.cli.reference` and commit the page"


def test_the_configuration_page_is_generated_from_the_settings() -> None:
    """docs/reference/configuration.md equals what the Settings fields' descriptions give now."""
    assert reference.CONFIG_PAGE.read_text("utf-8") == reference.configuration_page(), REGENERATE


def test_the_cli_page_is_generated_from_the_command_tree() -> None:
    """docs/reference/cli.md equals what the Typer app documents now."""
    assert reference.CLI_PAGE.read_text("utf-8") == reference.cli_page(), REGENERATE


def test_every_setting_and_command_is_on_its_page() -> None:
    """Each setting's variable and each command group appears on the page a reader opens."""
    config = reference.CONFIG_PAGE.read_text("utf-8")
    for name in Settings.model_fields:
        assert f"`PERMBROKER_{name.upper()}`" in config, name
    cli = reference.CLI_PAGE.read_text("utf-8")
    for group in ("stack", "grants", "audit", "policy", "agents", "keys", "services", "kafka"):
        assert f"## `permbroker {group}`" in cli, group


def test_a_setting_without_a_description_cannot_be_documented() -> None:
    """The generator refuses a field with no description instead of printing an empty cell."""

    class Bare(Settings):
        undocumented: int = 1

    with pytest.raises(ValueError, match="undocumented has no description"):
        reference.rows(Bare, "PERMBROKER_")


def test_types_and_defaults_read_as_a_person_writes_them() -> None:
    """Unions without pipes (they would split a table cell); machine-dependent defaults are
    not printed (the page would differ from one machine to the next)."""
    fields = Settings.model_fields
    assert reference.type_name(fields["kafka_ca_file"].annotation) == "Path or None"
    assert reference.type_name(fields["kafka_sasl_mechanism"].annotation) == (
        "'SCRAM-SHA-512' or 'SCRAM-SHA-256' or 'PLAIN'")
    assert reference.default_text(fields["cache_dir"]) == "(computed)"
    assert reference.default_text(fields["stack_dir"]) == "(computed)"
    assert reference.default_text(fields["allow_unsigned"]) == "`false`"
    assert reference.default_text(fields["jwks_path"]) == "(none)"
