"""CloudEvents codec: round trips of every model, decode errors, versioned event types."""

from __future__ import annotations

import re

import pytest

from broker.adapters.kafka import codec
from broker.errors import WireError
from schemas.events import (
    EVENT_TYPES,
    AuditWithheld,
    EnforcementPointStatus,
    EscalationRequested,
    JwksPublished,
    RiskObserved,
    RoutingAnnounced,
    WireModel,
    model_for_type,
    partition_key,
)
from tests.support.wire import (
    AGENT,
    NOW,
    REQUESTED,
    SAMPLES,
    SOURCE,
    VALID,
    headers_of,
    message,
)

# --- codec round trips ------------------------------------------------------------------------


def test_samples_cover_every_event_model() -> None:
    """A new event model must get a sample here so it is round-tripped too."""
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("model", list(EVENT_TYPES), ids=lambda m: m.__name__)
def test_every_model_round_trips_through_the_codec(model: type[WireModel]) -> None:
    """encode/decode is lossless, sets the ce_* headers, and keys the message by agent id."""
    event = SAMPLES[model]
    encoded = codec.encode(event, source=SOURCE, time=NOW)
    headers = headers_of(encoded)
    # The agent id; the enforcement point for its status, the issuer for the JWKS, none for a
    # routing announcement (it concerns no agent) or a withheld audit entry (it names none).
    key = {EnforcementPointStatus: "payments-api", JwksPublished: "permbroker",
           RoutingAnnounced: None, AuditWithheld: None}.get(model, AGENT)
    assert partition_key(event) == key
    assert headers == {
        "ce_specversion": "1.0",
        "ce_type": EVENT_TYPES[model],
        "ce_source": SOURCE,
        "ce_id": event.event_id,
        "ce_time": "2026-11-28T10:00:00Z",
        **({"ce_subject": key} if key is not None else {}),
        "content-type": "application/json",
    }
    assert encoded.key == (key.encode() if key is not None else None)
    assert codec.decode(encoded.key, encoded.value, encoded.headers) == event
    assert codec.decode(encoded.key, encoded.value, dict(encoded.headers)) == event


def test_risk_signal_without_agent_is_keyed_by_resource() -> None:
    """A signal about a resource only is keyed (and subjected) by that resource."""
    signal = RiskObserved(
        signal_id="sig-2",
        resource="acct-9",
        kind="fraud.spike",
        severity=0.5,
        source="ledger",
        observed_at=NOW,
    )
    encoded = codec.encode(signal, source=SOURCE, time=NOW)
    assert encoded.key == b"acct-9"
    assert headers_of(encoded)["ce_subject"] == "acct-9"
    assert codec.decode(encoded.key, encoded.value, encoded.headers) == signal


# --- decode errors ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00\xff not json", "JSON"),
        (b'{"request_id": ', "JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'"a string"', "not a JSON object"),
        (b"x" * (codec.MAX_VALUE_BYTES + 1), "exceeds"),
    ],
)
def test_decode_rejects_bad_values(value: bytes, reason: str) -> None:
    """Non-JSON, non-object and oversized values raise WireError saying why."""
    with pytest.raises(WireError, match=reason):
        codec.decode(*message(value))


def test_decode_rejects_a_tombstone() -> None:
    """A null value is not an event."""
    with pytest.raises(WireError, match="tombstone"):
        codec.decode(AGENT.encode(), None, message(VALID)[2])


def test_decode_rejects_unknown_event_type() -> None:
    """An event type no model is registered for is rejected by name."""
    with pytest.raises(WireError, match=re.escape("unknown event type 'io.permbroker.nothing.v1'")):
        codec.decode(*message(VALID, ce_type="io.permbroker.nothing.v1"))


@pytest.mark.parametrize("header", ["ce_specversion", "ce_id", "ce_type", "ce_source"])
def test_decode_rejects_missing_required_header(header: str) -> None:
    """A message missing a REQUIRED CloudEvents attribute is rejected, naming the header."""
    with pytest.raises(WireError, match=f"not a binary-mode CloudEvent.*{header}"):
        codec.decode(*message(VALID, drop=header))


def test_decode_rejects_no_headers_at_all() -> None:
    """Bytes without any CloudEvents header are rejected."""
    with pytest.raises(WireError, match="not a binary-mode CloudEvent"):
        codec.decode(AGENT.encode(), VALID, None)


def test_decode_rejects_key_of_another_agent() -> None:
    """The message key must be the event's agent id: no agent can speak for another."""
    with pytest.raises(WireError, match="does not match the event's agent 'fraud-detector-7'"):
        codec.decode(*message(VALID, key=b"report-writer-2"))


def test_decode_rejects_missing_key_for_an_agent_event() -> None:
    """An agent's event without a key would escape its partition: it is rejected."""
    with pytest.raises(WireError, match="does not match the event's agent"):
        codec.decode(*message(VALID, key=None))


# --- versioning -------------------------------------------------------------------------------


def test_minor_version_maps_to_its_major_model() -> None:
    """io.permbroker.escalation.requested.v1.3 is the v1 model; the codec decodes it."""
    assert model_for_type(f"{REQUESTED}.3") is EscalationRequested
    event = codec.decode(*message(VALID, ce_type=f"{REQUESTED}.3"))
    assert event == SAMPLES[EscalationRequested]


@pytest.mark.parametrize(
    "ce_type",
    [
        "io.permbroker.escalation.requested.v2",
        "io.permbroker.escalation.requested",
        "io.permbroker.escalation.requested.v1.x",
        "com.example.escalation.requested.v1",
    ],
)
def test_other_major_or_malformed_versions_are_unknown(ce_type: str) -> None:
    """A new major version (or no version) has no model until one is added."""
    assert model_for_type(ce_type) is None
    with pytest.raises(WireError, match="unknown event type"):
        codec.decode(*message(VALID, ce_type=ce_type))
