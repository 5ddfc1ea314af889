"""The ``permbroker`` command line (Typer + Rich). L3: imports broker and schemas, never streams.

Every list command takes ``--json``; every time shown is absolute with the time remaining;
every error says what to do next and exits non-zero.
"""

from __future__ import annotations

import logging
import sys

import typer
from confluent_kafka import KafkaException
from pydantic import ValidationError
from redis.exceptions import RedisError
from rich.text import Text

from broker.adapters.kafka.clientlog import silence
from broker.cli.audit import checks as _audit_checks  # noqa: F401 - registers `audit checks`
from broker.cli.audit.audit import audit_app, audit_keys_app
from broker.cli.context import use_settings
from broker.cli.grants.approvals import approvals_app
from broker.cli.grants.grants import grants_app
from broker.cli.grants.revoke import agents_revoke, revoke_app
from broker.cli.identity.agents import agents_app
from broker.cli.identity.behaviour import behaviour_app
from broker.cli.identity.inventory import inventory_app
from broker.cli.identity.keys import keys_app
from broker.cli.identity.services import services_app
from broker.cli.ops.dev import dev_app
from broker.cli.ops.enforcement import api_app, revocations_app
from broker.cli.ops.kafka import kafka_app
from broker.cli.ops.run import run_app
from broker.cli.ops.sealer import sealer_app
from broker.cli.ops.stack import stack_app
from broker.cli.output import err, fail
from broker.cli.policy import policy_app
from broker.config import Settings
from broker.errors import BrokerError, ConfigError

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
        for line in settings_errors(exc):
            err.print(Text.assemble(("error:", "bold red"), " ", line), soft_wrap=True,
                      highlight=False)
        raise fail("invalid settings",
                   "fix or unset the variables (or config file entries) named above") from exc
    except ConfigError as exc:
        raise fail(str(exc), "fix PERMBROKER_CONFIG or the config file") from exc


def settings_errors(exc: ValidationError, shown: int = 3) -> list[str]:
    """One line per invalid setting, naming its variable and the value it had."""
    lines = []
    for e in exc.errors():
        name = "PERMBROKER_" + "_".join(str(part) for part in e["loc"]).upper()
        lines.append(f"{name}={e.get('input')!r}: {e['msg']}")
    more = len(lines) - shown
    return lines[:shown] + ([f"... and {more} more"] if more > 0 else [])


# The command tree, assembled here only. Each module of broker/cli decorates its commands on
# its own Typer; a Typer added without a name contributes its commands to the group it is
# added to. Added in the order ``--help`` lists them.
app.add_typer(revoke_app)  # permbroker revoke
app.add_typer(inventory_app)  # permbroker inventory
app.add_typer(run_app)  # permbroker worker | demo | request
app.add_typer(dev_app)  # permbroker dev
app.add_typer(sealer_app)  # permbroker sealer
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
agents_app.command("revoke")(agents_revoke)  # permbroker agents revoke AGENT
agents_app.add_typer(behaviour_app)  # permbroker agents stats | class-stats
app.add_typer(keys_app, name="keys")
app.add_typer(services_app, name="services")
app.add_typer(approvals_app, name="approvals")
app.add_typer(kafka_app, name="kafka")


def main() -> None:
    """Console entry point: an expected failure escaping a command is one line and a hint,
    never a traceback; librdkafka's own lines stay out of the terminal (the error names the
    cause)."""
    silence()
    refusals = _RefusalSummary()
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except (BrokerError, KafkaException, OSError, RedisError) as exc:
        hint = "is Kafka up? permbroker stack status" if isinstance(exc, KafkaException) else ""
        sys.exit(fail(exc, hint).exit_code)
    finally:
        refusals.report()


class _RefusalSummary(logging.Handler):
    """Records the readers refused (unsigned, forged: logged by the decode edge one line
    each) become one line at exit: how many, and the first, so an error stays readable."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []
        edge = logging.getLogger("permbroker.edge")
        edge.addHandler(self)
        edge.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())

    def report(self) -> None:
        if self.seen:
            more = f" (and {len(self.seen) - 1} more)" if len(self.seen) > 1 else ""
            err.print(Text(f"note: refused an untrusted record: {self.seen[0]}{more}"),
                      soft_wrap=True, highlight=False)
