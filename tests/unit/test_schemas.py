"""The wire contract: generated files, CloudEvents codec round trips, and hostile input."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from broker.adapters.kafka import codec
from broker.errors import WireError
from schemas import generate
from schemas.events import (
    EVENT_TYPES,
    MAX_REQUESTED_DURATION_S,
    MAX_SCOPES_PER_REQUEST,
    AgentCommand,
    AgentKey,
    AgentProfile,
    AgentRecord,
    AgentRevoked,
    ApprovalVoted,
    AuditRecord,
    CommandAnswered,
    EnforcementPointStatus,
    EscalationDecided,
    EscalationPending,
    EscalationRequested,
    GrantCommand,
    GrantExpired,
    GrantExpiring,
    GrantIssued,
    GrantReleased,
    GrantRenewed,
    GrantRevoked,
    GrantUsed,
    JwksPublished,
    ModelInfo,
    PublicJwk,
    ReleaseDecided,
    ReleaseRequested,
    RenewalDecided,
    RenewalRequested,
    RevocationAcknowledged,
    RiskObserved,
    ScopeDenial,
    WireModel,
    event_id,
    model_for_type,
    partition_key,
)
from schemas.topics import ALL_TOPICS

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
LATER = NOW + timedelta(seconds=20)
AGENT = "fraud-detector-7"
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
SOURCE = "/permbroker/tests"
REQUESTED = EVENT_TYPES[EscalationRequested]
KID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
JWK = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")

SAMPLES: dict[type[WireModel], WireModel] = {
    AgentProfile: AgentProfile(
        agent_id=AGENT,
        agent_class="fraud-detection",
        owner="fraud-ops@example.com",
        model=ModelInfo(name="fraud-gbm", version="3.2"),
        baseline=("payments:transactions.read",),
        ceiling=("payments:accounts.*",),
        operational_params={"window": 30},
    ),
    EscalationRequested: EscalationRequested(
        request_id="req-1",
        agent_id=AGENT,
        scopes=(FREEZE, PII),
        resources=("acct-1",),
        duration_s=900,
        reason="card-testing pattern",
        confidence=0.95,
        risk_score=0.85,
        signals={"pattern": "card-testing", "hits": 12},
        requested_at=NOW,
    ),
    RiskObserved: RiskObserved(
        signal_id="sig-1",
        subject_agent_id=AGENT,
        kind="behaviour_anomaly",
        severity=0.9,
        source="anomaly-detector",
        observed_at=NOW,
    ),
    EscalationDecided: EscalationDecided(
        decision_id="decision-1",
        request_id="req-1",
        agent_id=AGENT,
        outcome="granted",
        granted_scopes=(FREEZE,),
        resources=("acct-1",),
        grant_id="grant-1",
        expires_at=LATER,
        denied=(ScopeDenial(scope=PII, rule="no-pii-for-risky-agent", reason="risky"),),
        duration_s=20,
        matched_rules=("fraud-freeze-on-pattern",),
        policy_revision="sha256:ab",
        decided_at=NOW,
    ),
    GrantIssued: GrantIssued(
        grant_id="grant-1",
        agent_id=AGENT,
        request_id="req-1",
        scopes=(FREEZE,),
        resources=("acct-1",),
        issued_at=NOW,
        expires_at=LATER,
        policy_revision="sha256:ab",
        rules=("fraud-freeze-on-pattern",),
        model_version="3.2",
    ),
    GrantRevoked: GrantRevoked(
        grant_id="grant-1",
        agent_id=AGENT,
        revoked_at=NOW,
        expires_at=LATER,
        reason="anomaly",
        rule="revoke-on-behaviour-anomaly",
        cause_event_id="sig-1",
        quarantined_until=LATER,
    ),
    GrantExpired: GrantExpired(grant_id="grant-1", agent_id=AGENT, expires_at=LATER),
    GrantReleased: GrantReleased(grant_id="grant-1", agent_id=AGENT, released_at=NOW),
    AgentRevoked: AgentRevoked(
        agent_id=AGENT,
        revoked_at=NOW,
        reason="anomaly",
        rule="revoke-on-behaviour-anomaly",
        cause_event_id="sig-1",
        grant_ids=("grant-1",),
        markers_until=LATER,
    ),
    AuditRecord: AuditRecord(
        audit_id="audit-1",
        kind="escalation.decided",
        agent_id=AGENT,
        occurred_at=NOW,
        subject_id="req-1",
        outcome="granted",
        inputs={"request": {"request_id": "req-1"}},
    ),
    GrantExpiring: GrantExpiring(grant_id="grant-1", agent_id=AGENT, expires_at=LATER,
                                 warned_at=NOW),
    RenewalRequested: RenewalRequested(
        request_id="req-2", agent_id=AGENT, grant_id="grant-1", duration_s=20,
        reason="still investigating", confidence=0.95, risk_score=0.9, requested_at=NOW),
    RenewalDecided: RenewalDecided(
        decision_id="decision-2", request_id="req-2", agent_id=AGENT, grant_id="grant-1",
        outcome="renewed", expires_at=LATER, previous_expires_at=NOW, total_duration_s=40,
        max_total_duration_s=60, policy_revision="sha256:ab", decided_at=NOW,
        consistency_token="ct1:permbroker.grants@3:17"),
    GrantRenewed: GrantRenewed(
        grant_id="grant-1", agent_id=AGENT, request_id="req-2", scopes=(FREEZE,),
        resources=("acct-1",), renewed_at=NOW, previous_expires_at=NOW, expires_at=LATER,
        policy_revision="sha256:ab", rules=("fraud-freeze-on-pattern",)),
    ReleaseRequested: ReleaseRequested(
        request_id="req-3", agent_id=AGENT, grant_id="grant-1", reason="done", requested_at=NOW),
    ReleaseDecided: ReleaseDecided(
        decision_id="decision-3", request_id="req-3", agent_id=AGENT, grant_id="grant-1",
        outcome="released", decided_at=NOW),
    RevocationAcknowledged: RevocationAcknowledged(
        ack_id="ack-1", enforcement_point="payments-api", agent_id=AGENT, cause_event_id="sig-1",
        grant_ids=("grant-1",), revoked_at=NOW, applied_at=LATER, topic="permbroker.grants",
        partition=3, offset=17),
    EnforcementPointStatus: EnforcementPointStatus(
        enforcement_point="payments-api", topic="permbroker.grants.payments", ready=True,
        staleness_s=0.2, lag=0, started_at=NOW, reported_at=LATER),
    AgentRecord: AgentRecord(
        agent_id=AGENT,
        profile=AgentProfile(
            agent_id=AGENT,
            agent_class="fraud-detection",
            owner="fraud-ops@example.com",
            model=ModelInfo(name="fraud-gbm", version="3.2", digest="sha256:4f"),
        ),
        keys=(AgentKey(kid=KID, jwk=JWK, added_at=NOW),),
        revision=1,
        change="registered",
        changed_at=NOW,
        changed_by="operator:alice",
        cause_id="cmd-1",
        cause_offset=7,
        registered_at=NOW,
    ),
    AgentCommand: AgentCommand(
        command_id="cmd-2",
        action="rotate_key",
        agent_id=AGENT,
        key=JWK,
        overlap_s=300,
        issued_at=NOW,
    ),
    GrantCommand: GrantCommand(
        command_id="cmd-3",
        agent_id=AGENT,
        grant_id="grant-1",
        action="token",
        audience="payments",
        reply_key=PublicJwk(kty="OKP", crv="X25519", x="AAAA"),
        issued_at=NOW,
    ),
    CommandAnswered: CommandAnswered(
        answer_id="answer-1",
        command_id="cmd-3",
        agent_id=AGENT,
        action="token",
        outcome="refused",
        reason="grant-1 is not an active grant of fraud-detector-7",
        rule="identity:not-your-grant",
        grant_id="grant-1",
        answered_at=NOW,
    ),
    GrantUsed: GrantUsed(
        use_id="use-1", agent_id=AGENT, grant_id="g-1", scope="payments:accounts.freeze",
        resource="acct-1", service="payments-api", outcome="consumed", used=1, limit=3,
        used_at=NOW,
    ),
    JwksPublished: JwksPublished(
        issuer="permbroker",
        keys=(JWK.model_copy(update={"kid": KID, "alg": "EdDSA"}),),
        revision="sha256:12",
        published_at=NOW,
    ),
}
# Approvals (issue 6): added apart so the table above stays as it was.
SAMPLES[EscalationPending] = EscalationPending(
    decision_id="decision-9", request_id="req-9", agent_id=AGENT,
    scopes=("payments:accounts.freeze",), resources=("acct-1",), duration_s=300, quorum=2,
    approvers=("operator:oncall", "verifier-1", "verifier-2"),
    window_expires_at=NOW + timedelta(minutes=10), matched_rules=("fraud-graduated",),
    tiers=("fraud-graduated/unsure",), policy_revision="sha256:12", decided_at=NOW,
)
SAMPLES[ApprovalVoted] = ApprovalVoted(
    vote_id="vote-1", request_id="req-9", agent_id=AGENT, approver="verifier-1",
    verdict="approve", reason="pattern confirmed", voted_at=NOW,
)


def headers_of(encoded: codec.Encoded) -> dict[str, str]:
    return {name: value.decode() for name, value in encoded.headers}


def request_json(**changes: Any) -> dict[str, Any]:
    return SAMPLES[EscalationRequested].model_dump(mode="json") | changes


def message(
    value: bytes, *, ce_type: str = REQUESTED, key: bytes | None = AGENT.encode(), drop: str = ""
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", ce_type.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_id", b"req-1"),
        ("ce_time", NOW.isoformat().encode()),
        ("ce_subject", AGENT.encode()),
        ("content-type", b"application/json"),
    ]
    return key, value, [(name, raw) for name, raw in headers if name != drop]


# --- generated files -------------------------------------------------------------------------


def test_committed_contract_files_match_the_generator() -> None:
    """Every committed JSON Schema and the AsyncAPI document equal what the models generate."""
    drifted = generate.drift()
    assert not drifted, (
        f"generated contract files drifted from schemas/events.py or schemas/topics.py: "
        f"{', '.join(drifted)}; run `python -m schemas.generate` and commit the result"
    )


def test_drift_check_names_a_changed_missing_or_stale_file(tmp_path: Path) -> None:
    """--check exits 1 and names each file that was edited, deleted or left over."""
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    edited = tmp_path / generate.schema_path(REQUESTED)
    edited.write_text(edited.read_text().replace("maxItems", "maxitems"))
    (tmp_path / generate.ASYNCAPI_FILE).unlink()
    (tmp_path / generate.schema_path("io.permbroker.gone.v1")).write_text("{}\n")
    assert set(generate.drift(tmp_path)) == {
        generate.ASYNCAPI_FILE,
        generate.schema_path("io.permbroker.gone.v1"),
        generate.schema_path(REQUESTED),
    }
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1


def test_a_model_change_without_regeneration_is_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """Changing a model's schema makes the drift check name that model's schema file."""
    original = EscalationRequested.model_json_schema

    def changed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        schema = original(*args, **kwargs)
        schema["properties"]["priority"] = {"type": "integer"}
        return schema

    monkeypatch.setattr(EscalationRequested, "model_json_schema", changed)
    assert generate.drift() == [generate.schema_path(REQUESTED)]


@pytest.mark.parametrize("model", list(EVENT_TYPES), ids=lambda m: m.__name__)
def test_json_schema_file_has_id_title_and_forbids_extra_fields(model: type[WireModel]) -> None:
    """Each schema file carries $id urn:permbroker:schema:<type>, a title, and the model's shape."""
    event_type = EVENT_TYPES[model]
    path = generate.ROOT / generate.schema_path(event_type)
    text = path.read_text()
    schema = json.loads(text)
    assert schema["$id"] == f"urn:permbroker:schema:{event_type}"
    assert schema["title"] == model.__name__
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(model.model_fields)
    assert text == json.dumps(schema, indent=2, sort_keys=True) + "\n"


def test_asyncapi_has_one_channel_per_topic_with_its_messages() -> None:
    """The AsyncAPI 3.0 document parses as YAML and lists each topic with its event types."""
    doc = yaml.safe_load((generate.ROOT / generate.ASYNCAPI_FILE).read_text())
    assert doc == generate.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["channels"]) == {topic.name for topic in ALL_TOPICS}
    titles = {name: m["title"] for name, m in doc["components"]["messages"].items()}
    for topic in ALL_TOPICS:
        channel = doc["channels"][topic.name]
        kafka = channel["bindings"]["kafka"]
        assert channel["address"] == topic.name
        assert channel["description"] == topic.description
        assert kafka["partitions"] == topic.partitions
        assert kafka["topicConfiguration"]["cleanup.policy"] == [topic.cleanup_policy]
        listed = {titles[ref["$ref"].rsplit("/", 1)[1]] for ref in channel["messages"].values()}
        assert listed == (set(topic.event_types) or {"dead letter"})


@pytest.mark.parametrize(
    "model",
    [m for m in EVENT_TYPES if m not in (AgentProfile, JwksPublished)],
    ids=lambda m: m.__name__,
)
def test_asyncapi_message_documents_ce_headers_key_and_payload(model: type[WireModel]) -> None:
    """Each message documents the ce_* headers, the agent-id key and a $ref to its schema."""
    message_doc = generate.asyncapi()["components"]["messages"][model.__name__]
    headers = message_doc["headers"]["properties"]
    assert set(headers) == {
        "ce_specversion",
        "ce_type",
        "ce_source",
        "ce_id",
        "ce_time",
        "ce_subject",
        "content-type",
        "ce_signature",
    }
    assert message_doc["payload"] == {"$ref": f"./jsonschema/{EVENT_TYPES[model]}.json"}
    assert (generate.ROOT / message_doc["payload"]["$ref"]).is_file()
    key_doc = message_doc["bindings"]["kafka"]["key"]["description"]
    assert ("enforcement point" if model is EnforcementPointStatus else "agent id") in key_doc


def test_every_topic_event_type_is_a_known_model() -> None:
    """Topics only carry event types that have a model (and so a schema file)."""
    for topic in ALL_TOPICS:
        for event_type in topic.event_types:
            assert model_for_type(event_type) is not None, (topic.name, event_type)


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
    # The agent id; the enforcement point for its status, the issuer for the JWKS.
    key = {EnforcementPointStatus: "payments-api", JwksPublished: "permbroker"}.get(model, AGENT)
    assert partition_key(event) == key
    assert headers == {
        "ce_specversion": "1.0",
        "ce_type": EVENT_TYPES[model],
        "ce_source": SOURCE,
        "ce_id": event_id(event),
        "ce_time": "2026-11-28T10:00:00Z",
        "ce_subject": key,
        "content-type": "application/json",
    }
    assert encoded.key == key.encode()
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


# --- decode errors ----------------------------------------------------------------------------

VALID = json.dumps(request_json()).encode()


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
