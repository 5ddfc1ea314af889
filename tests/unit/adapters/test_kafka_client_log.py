"""librdkafka's log lines go through Python logging, one line per condition (a real client)."""

from __future__ import annotations

import logging
import socket
import time

import pytest
from confluent_kafka import Producer

from broker.adapters.kafka.clientlog import LOGGER, last_condition, routed


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_refused_connection_is_one_log_record_not_one_per_retry(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    """A producer retrying a closed port for 2 s: librdkafka writes nothing to stderr itself,
    and the Python logger gets one record for the refused connection, not one per retry."""
    port = closed_port()
    producer = Producer(routed({"bootstrap.servers": f"127.0.0.1:{port}",
                                "reconnect.backoff.ms": 10, "reconnect.backoff.max.ms": 20}))
    with caplog.at_level(logging.DEBUG, logger=LOGGER.name):
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            producer.poll(0.05)  # serves the queued log lines
    refused = [r for r in caplog.records
               if r.name == LOGGER.name and "Connection refused" in r.getMessage()
               and f":{port}" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert f":{port}" in last_condition()
    assert "rdkafka" not in capfd.readouterr().err
