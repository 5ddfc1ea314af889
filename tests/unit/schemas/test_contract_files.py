"""The generated contract files (JSON Schema, AsyncAPI) match the models and the topic registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import generate
from schemas.events import (
    EVENT_TYPES,
    AgentProfile,
    EnforcementPointStatus,
    EscalationRequested,
    JwksPublished,
    WireModel,
    model_for_type,
)
from schemas.topics import ALL_TOPICS, tenant_topics
from tests.support.wire import (
    REQUESTED,
)

# --- generated files -------------------------------------------------------------------------


def test_committed_contract_files_match_the_generator() -> None:
    """Every committed JSON Schema and the AsyncAPI document equal what the models generate."""
    drifted = generate.drift()
    assert not drifted, (
        f"generated contract files drifted from schemas/events/ or schemas/topics.py: "
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
    """The AsyncAPI 3.0 document parses as YAML and lists each topic with its event types,
    a tenant's own topics once, with the tenant as a parameter."""
    doc = yaml.safe_load((generate.ROOT / generate.ASYNCAPI_FILE).read_text())
    assert doc == generate.asyncapi()
    assert doc["asyncapi"] == "3.0.0"
    own = tenant_topics("{tenant}")
    assert set(doc["channels"]) == {topic.name for topic in (*ALL_TOPICS, *own)}
    assert {t.name for t in own} == {"permbroker.tenant.{tenant}.decisions",
                                     "permbroker.tenant.{tenant}.grants",
                                     "permbroker.tenant.{tenant}.audit"}
    assert all(set(doc["channels"][t.name]["parameters"]) == {"tenant"} for t in own)
    titles = {name: m["title"] for name, m in doc["components"]["messages"].items()}
    for topic in (*ALL_TOPICS, *own):
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
