"""What a follower does with the errors its consumer reports: each logged once, and Kafka's
refusal to let it read kept, so whoever waits on the follower can say why nothing comes."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from broker.adapters.kafka.follow import MAX_LOGGED, ReadErrors


def _errors() -> ReadErrors:
    return ReadErrors("permbroker.decisions", "agent", "decision-watcher")


def test_a_refusal_is_kept_and_logged_once_until_the_reader_reads_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _errors()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        for _ in range(3):
            errors.saw(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert errors.refused.startswith("Kafka refuses to let agent read permbroker.decisions: ")
    assert "TOPIC_AUTHORIZATION_FAILED" in errors.refused
    assert [r.levelno for r in caplog.records] == [logging.ERROR]
    assert "permbroker kafka acls apply" in caplog.records[0].getMessage()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        errors.read()
        errors.read()
    assert errors.refused == ""
    assert [r.getMessage() for r in caplog.records] == [
        "decision-watcher: reading permbroker.decisions again"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        errors.saw(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert errors.refused and len(caplog.records) == 1  # a new refusal is logged again


def test_other_errors_are_warnings_not_refusals_and_end_of_partition_is_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _errors()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        errors.saw(KafkaError(KafkaError._PARTITION_EOF))
        errors.saw(KafkaError(KafkaError._TRANSPORT))
        errors.saw(KafkaError(KafkaError._TRANSPORT))
    assert errors.refused == ""
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "error reading permbroker.decisions" in caplog.records[0].getMessage()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        errors.read()
    assert len(caplog.records) == 1  # reading again after a mere warning says nothing


def test_distinct_errors_logged_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    errors = _errors()
    with caplog.at_level(logging.INFO, logger="permbroker.follow"):
        for i in range(MAX_LOGGED * 2):
            errors.saw(KafkaError(KafkaError._TRANSPORT, f"broker {i} down"))
    assert len(caplog.records) == MAX_LOGGED
