"""``permbroker sealer``: the audit sealer as its own process, its lag on /metrics. L3 (Typer).

Imports broker (adapters, config), prometheus-client. The stack, ``permbroker dev``, compose and
the test suites run it beside workers that do not seal (``PERMBROKER_AUDIT_SEALER=false``), so a
worker's CPU goes to deciding; ``permbroker audit seal`` is the same command.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from types import FrameType

import typer
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from broker.adapters import logs
from broker.adapters.audit import keys as audit_keys
from broker.adapters.audit.sealer import Sealer
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.kafka.lag import LagProbe, behind
from broker.cli.context import cli_kafka, cli_settings
from broker.cli.output import err, fail
from broker.errors import BrokerError, BusError
from schemas import topics

sealer_app = typer.Typer()
log = logging.getLogger("permbroker.sealer")


class SealerFigures(Collector):
    """At scrape time: raw audit records not sealed yet per partition this sealer holds, and
    how many it has sealed."""

    def __init__(self, sealer: Sealer, probe: LagProbe) -> None:
        self._sealer = sealer
        self._probe = probe

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        lag = GaugeMetricFamily("permbroker_sealer_lag", "Raw audit records this sealer has not "
                                "sealed yet, per partition it seals", labels=["partition"])
        up = GaugeMetricFamily("permbroker_sealer_lag_up", "1 when the lag could be read")
        try:
            behind_by = behind(self._probe.high(topics.AUDIT_RAW.name), self._sealer.positions())
            up.add_metric([], 1)
        except BusError:
            behind_by = {}
            up.add_metric([], 0)
        for partition, n in sorted(behind_by.items()):
            lag.add_metric([str(partition)], n)
        yield lag
        yield up
        yield CounterMetricFamily("permbroker_sealer_sealed", "Raw audit records sealed by this "
                                  "process", value=self._sealer.sealed)


def _serve(sealer: Sealer, port: int) -> None:
    if port == 0:
        return
    registry = CollectorRegistry()
    registry.register(SealerFigures(sealer, LagProbe(cli_kafka(), f"{cli_settings().app_id}"
                                                                  "-audit-sealer")))
    try:
        start_http_server(port, addr="127.0.0.1", registry=registry)
    except OSError as exc:  # a taken port costs the figures, never the sealing
        log.warning("sealer metrics not served on 127.0.0.1:%d: %s", port, exc)
        return
    err.print(f"sealer metrics on http://127.0.0.1:{port}/metrics")


@sealer_app.command("sealer")
def sealer() -> None:
    """Run the audit sealer: chain and sign permbroker.audit.raw into permbroker.audit."""
    settings = cli_settings()
    logs.hide(settings.kafka_password.get_secret_value() if settings.kafka_password else None)
    logs.configure("INFO")  # structured lines, like the worker's and the API's
    try:
        signer = RecordSigner(BrokerKeyring(settings.key_path("broker")))
        running = Sealer(settings, cli_kafka(), audit_keys.load_keys(settings), signer)
        _serve(running, settings.audit_sealer_metrics_port)

        def stop(_sig: int, _frame: FrameType | None) -> None:
            running.stop()

        signal.signal(signal.SIGTERM, stop)
        err.print("sealing permbroker.audit.raw into permbroker.audit (Ctrl-C to stop)")
        running.run()
    except KeyboardInterrupt:
        pass
    except BrokerError as exc:
        raise fail(exc, "is Kafka up and the topic there? permbroker stack status") from exc
