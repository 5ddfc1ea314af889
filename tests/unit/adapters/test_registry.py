"""The in-memory agent registry: newest revision wins, held compact, read back identical."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.kafka.registry_view import Registry
from schemas.events import AgentKey, AgentProfile, AgentRecord, ModelInfo

AT = datetime(2026, 1, 1, tzinfo=UTC)


def record(agent_id: str, revision: int = 1, owner: str = "fraud@example.com") -> AgentRecord:
    key = SigningKey.generate()
    profile = AgentProfile(agent_id=agent_id, agent_class="fraud-detection", owner=owner,
                           model=ModelInfo(name="m", version="3.2", digest="sha256:" + "a" * 64),
                           confidence_threshold=0.9, labels={"team": "fraud"})
    return AgentRecord(agent_id=agent_id, profile=profile, revision=revision,
                       change="registered", changed_at=AT, changed_by="operator:alice",
                       cause_id=f"evt-{agent_id}-{revision}", registered_at=AT,
                       keys=(AgentKey(kid=key.kid, jwk=key.jwk, added_at=AT),))


def test_the_newest_revision_is_kept_and_an_older_one_changes_nothing() -> None:
    registry = Registry()
    first, second = record("a", 1), record("a", 2, owner="new@example.com")
    assert registry.apply(first) and registry.apply(second)
    assert not registry.apply(record("a", 2, owner="late@example.com"))
    assert not registry.apply(first)
    assert registry.get("a") == second
    assert registry.owner_of(first.keys[0].kid) == "a"  # a key id ever registered stays known
    assert registry.get("b") is None and registry.count() == 1


def test_records_read_back_equal_once_no_longer_held_parsed() -> None:
    registry = Registry(parsed=2)
    made = [record(f"agent-{n}") for n in range(5)]
    for r in made:
        registry.apply(r)
    assert registry.count() == 5 and registry.agent_ids() == [r.agent_id for r in made]
    assert registry.get("agent-0") == made[0]  # evicted from the parsed ones: unpacked again
    assert registry.records() == made
    assert registry.records_of(["agent-3", "nobody", "agent-1"]) == [made[3], made[1]]


def test_a_pass_over_every_record_keeps_the_recently_read_ones_parsed() -> None:
    registry = Registry(parsed=2)
    for n in range(4):
        registry.apply(record(f"agent-{n}"))
    hot = registry.get("agent-3")
    registry.records()
    assert registry.get("agent-3") is hot
