"""The ``permbroker`` command line (Typer + Rich). L3: imports broker and schemas, never streams.

Every list command takes ``--json``; every time shown is absolute with the time remaining;
every error says what to do next and exits non-zero.
"""

from __future__ import annotations

import typer
from pydantic import ValidationError

from broker.cli.audit.audit import audit_app, audit_keys_app
from broker.cli.context import use_settings
from broker.cli.grants.approvals import approvals_app
from broker.cli.grants.grants import grants_app
from broker.cli.grants.revoke import revoke_app
from broker.cli.identity.agents import agents_app
from broker.cli.identity.behaviour import behaviour_app
from broker.cli.identity.inventory import inventory_app
from broker.cli.identity.keys import keys_app
from broker.cli.identity.services import services_app
from broker.cli.ops.dev import dev_app
from broker.cli.ops.enforcement import api_app, revocations_app
from broker.cli.ops.kafka import kafka_app
from broker.cli.ops.run import run_app
from broker.cli.ops.stack import stack_app
from broker.cli.output import fail
from broker.cli.policy import policy_app
from broker.config import Settings
from broker.errors import ConfigError

app = typer.Typer(
    help="permbroker: time-boxed, narrow, revocable permissions for AI agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _read_settings() -> None:
    """Read the settings once, for whichever command runs (``cli_settings()``)."""
    try:
        use_settings(Settings())
    except ValidationError as exc:
        raise fail(f"invalid settings: {exc}",
                   "check the PERMBROKER_* variables and the config file") from exc
    except ConfigError as exc:
        raise fail(str(exc), "fix PERMBROKER_CONFIG or the config file") from exc


# The command tree, assembled here only. Each module of broker/cli decorates its commands on
# its own Typer; a Typer added without a name contributes its commands to the group it is
# added to. Added in the order ``--help`` lists them.
app.add_typer(revoke_app)  # permbroker revoke
app.add_typer(inventory_app)  # permbroker inventory
app.add_typer(run_app)  # permbroker worker | demo | request
app.add_typer(dev_app)  # permbroker dev
app.add_typer(
    stack_app, name="stack", help="Start, stop and inspect the local Kafka + Redis stack."
)
app.add_typer(grants_app, name="grants")
app.add_typer(audit_app, name="audit")
audit_app.add_typer(audit_keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(revocations_app, name="revocations")
app.add_typer(api_app, name="api")
app.add_typer(agents_app, name="agents")
agents_app.add_typer(behaviour_app)  # permbroker agents stats | class-stats
app.add_typer(keys_app, name="keys")
app.add_typer(services_app, name="services")
app.add_typer(approvals_app, name="approvals")
app.add_typer(kafka_app, name="kafka")


def main() -> None:
    """Console entry point."""
    app()
