"""Structured logs: the ids bound are on every line, no secret ever reaches the stream.

Each secret is fed through every path a line takes (the message and its arguments, extra fields,
bound ids, an exception's text, structlog's own logger, the loggers of faust, uvicorn and
aiokafka, a value hidden by the process), in JSON and on the console.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from broker.adapters import logs

TOKEN = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhZ2VudC03In0.c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
PEM = ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHf0rb1ddenkeymaterial00000000000\n"
       "-----END PRIVATE KEY-----")
PASSWORD = "hunter2-correct-horse"
HIDDEN = "kafka-sasl-pw-7f3a9c"
SECRETS = (TOKEN, "MC4CAQAwBQYDK2VwBCIEIHf0rb1ddenkeymaterial", PASSWORD, HIDDEN)
LOGGERS = ("permbroker.worker", "permbroker.api", "faust.worker", "uvicorn.error",
           "aiokafka.consumer")


@pytest.fixture(params=[True, False], ids=["json", "console"])
def stream(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """Logging configured onto a string buffer, as JSON and as console lines."""
    out = io.StringIO()
    previous = logging.root.handlers[:], logging.root.level
    # Other tests in the same process may have configured these loggers or their parents (an
    # in-process uvicorn gives "uvicorn" its own handler and stops propagation): start each, and
    # each ancestor, from the state a fresh process has.
    names = {".".join(n.split(".")[:i]) for n in LOGGERS for i in range(1, n.count(".") + 2)}
    named = [logging.getLogger(n) for n in sorted(names)]
    states = [(lg.disabled, lg.propagate, lg.level, lg.handlers[:]) for lg in named]
    for lg in named:
        lg.disabled, lg.propagate, lg.level, lg.handlers[:] = False, True, logging.NOTSET, []
    logs.configure("DEBUG", stream=out, json=request.param)
    logs.hide(HIDDEN)
    yield out
    logging.root.handlers[:], logging.root.level = previous
    for lg, (disabled, propagate, level, handlers) in zip(named, states, strict=True):
        lg.disabled, lg.propagate, lg.level, lg.handlers[:] = disabled, propagate, level, handlers
    structlog.reset_defaults()


def every_path(name: str) -> None:
    """One line down each path a secret could take, with ids bound."""
    log = logging.getLogger(name)
    with logs.bound(agent_id="fraud-detector-7", request_id="req-1", grant_id=None):
        logs.bind(grant_id="grant-9")
        log.info("token %s for %s", TOKEN, "fraud-detector-7")
        log.warning("loaded key %s", PEM)
        log.error("connect failed: password=%s; retrying", PASSWORD)
        log.info('config {"password": "%s", "token": "%s"}', PASSWORD, TOKEN)
        log.info("auth header Bearer %s", TOKEN)
        log.info("sasl with %s", HIDDEN)
        log.info("extras", extra={"password": PASSWORD, "api_key": HIDDEN, "note": TOKEN})
        with logs.bound(token=TOKEN, signing_key=PEM):
            log.info("bound secrets")
        try:
            raise RuntimeError(f"bad credentials password={PASSWORD} token {TOKEN} {PEM}")
        except RuntimeError:
            log.exception("handler failed")
        structlog.get_logger(name).info("structlog", password=PASSWORD, detail=f"key {PEM}")


def test_no_secret_reaches_the_stream_on_any_path(stream: io.StringIO) -> None:
    """Every logger, every path: the secrets are cut, the ids and the message stay."""
    for name in LOGGERS:
        every_path(name)
    text = stream.getvalue()
    lines = [line for line in text.splitlines() if line.startswith(("{", "20"))]
    assert len(lines) == len(LOGGERS) * 10  # one per call (a traceback continues its line)
    assert all("fraud-detector-7" in line for line in lines)
    assert "grant-9" in text and "req-1" in text and "handler failed" in text
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"in the log: {leaked}"
    assert logs.REDACTED in text


def test_json_lines_carry_the_bound_ids_as_fields() -> None:
    """Each JSON line is one object with the ids bound when it was logged (None ids left out)."""
    out = io.StringIO()
    previous = logging.root.handlers[:], logging.root.level
    logs.configure("INFO", stream=out, json=True)
    try:
        log = logging.getLogger("permbroker.worker")
        with logs.bound(agent_id="a-1", request_id="r-1", grant_id=None):
            log.info("decided %s", "granted")
        log.info("outside")
    finally:
        logging.root.handlers[:], logging.root.level = previous
        structlog.reset_defaults()
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["event"] == "decided granted" and inside["level"] == "info"
    assert (inside["agent_id"], inside["request_id"]) == ("a-1", "r-1")
    assert "grant_id" not in inside and inside["logger"] == "permbroker.worker"
    assert "agent_id" not in outside and outside["event"] == "outside"


def test_scrub_leaves_ordinary_text_alone() -> None:
    """A line without secrets is unchanged (the patterns do not eat ids or words)."""
    line = "grant 3f2a of fraud-detector-7 on payments:accounts.freeze until 12:00:05"
    assert logs.scrub(line) == line
