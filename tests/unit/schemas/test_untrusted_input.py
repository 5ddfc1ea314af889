"""Untrusted input: a request breaking the contract is rejected in the model and on the wire."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from broker.adapters.kafka import codec
from broker.errors import WireError
from schemas.events import (
    MAX_REQUESTED_DURATION_S,
    MAX_SCOPES_PER_REQUEST,
    EscalationRequested,
)
from tests.support.wire import (
    AGENT,
    FREEZE,
    NOW,
    REQUESTED,
    SAMPLES,
    message,
    request_json,
)

# --- untrusted input --------------------------------------------------------------------------

HOSTILE = {
    "extra field": request_json(grant_everything=True),
    "naive datetime": request_json(requested_at="2026-11-28T10:00:00"),
    "bad scope": request_json(scopes=["Payments:Accounts"]),
    "scope without action": request_json(scopes=["payments:accounts"]),
    "glob in requested scope": request_json(scopes=["payments:accounts.*"]),
    "bare star scope": request_json(scopes=["*"]),
    "agent id with brace": request_json(agent_id="evil{x}"),
    "agent id with space": request_json(agent_id="evil agent"),
    "zero duration": request_json(duration_s=0),
    "negative duration": request_json(duration_s=-60),
    "duration over max": request_json(duration_s=MAX_REQUESTED_DURATION_S + 1),
    "10000 scopes": request_json(scopes=[f"pay:acct.a{i}" for i in range(10_000)]),
    "too many scopes": request_json(scopes=[FREEZE] * (MAX_SCOPES_PER_REQUEST + 1)),
    "no scopes": request_json(scopes=[]),
    "confidence above 1": request_json(confidence=1.5),
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_untrusted_request_is_rejected_by_the_model(data: dict[str, Any]) -> None:
    """An escalation request that breaks the contract fails validation."""
    with pytest.raises(ValidationError):
        EscalationRequested.model_validate(data)


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_untrusted_request_is_rejected_on_the_wire(data: dict[str, Any]) -> None:
    """The codec turns a contract violation into a WireError naming the event type."""
    if data.get("agent_id", AGENT) != AGENT:
        key: bytes | None = data["agent_id"].encode()
    else:
        key = AGENT.encode()
    with pytest.raises(WireError, match=re.escape(f"schema-invalid {REQUESTED}")):
        codec.decode(*message(json.dumps(data).encode(), key=key))


def test_valid_request_decodes_from_hand_built_message() -> None:
    """The hand-built message used for the rejection tests is itself valid."""
    event = codec.decode(*message(json.dumps(request_json()).encode()))
    assert event == SAMPLES[EscalationRequested]


def test_aware_non_utc_time_is_normalised_to_utc() -> None:
    """An offset time is accepted and stored as UTC."""
    event = EscalationRequested.model_validate(
        request_json(requested_at="2026-11-28T11:00:00+01:00")
    )
    assert event.requested_at == NOW
    assert event.requested_at.utcoffset() == timedelta(0)
