"""Agent lifecycle rules (pure): the policy's lifecycle section, key age (warning, refusal),
registration lapse and renewal, dormancy, and the baseline ending with the registration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.kafka.bus import Record
from broker.errors import PolicyError
from broker.identity.baseline import entitlement_of
from broker.identity.lifecycle import (
    key_age_problem,
    key_age_warning,
    lifecycle_flags,
    registration_ends,
    registration_problem,
)
from broker.identity.registry import Limits, apply_command
from broker.identity.rules import Principal, Reason
from broker.policy import load_policy
from broker.policy.lifecycle import AgentLifecycle
from broker.sdk.resource.index import GrantIndex
from schemas.events import AgentCommand, AgentKey, AgentProfile, AgentRecord, ModelInfo, PublicJwk
from tests.support.policy_files import BASE, write

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
DAY = timedelta(days=1)
JWK = PublicJwk(kty="OKP", crv="Ed25519", x="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
LIMITS = AgentLifecycle(max_key_age_s=90 * 86400, key_warning_s=14 * 86400,
                        dormant_after_s=30 * 86400, registration_ttl_s=365 * 86400)
READ = "payments:transactions.read"


def record(key_added: datetime = NOW, **fields: object) -> AgentRecord:
    profile = AgentProfile(agent_id="a-1", agent_class="fraud-detection", owner="ops",
                           model=ModelInfo(name="m", version="1"))
    key = AgentKey(kid="kid-00000001", jwk=JWK, added_at=key_added)
    return AgentRecord.model_validate({
        "agent_id": "a-1", "profile": profile, "keys": (key,), "revision": 1,
        "change": "registered", "changed_at": NOW, "changed_by": "operator:alice",
        "cause_id": "c-1", "registered_at": NOW, **fields})


def with_lifecycle(section: str) -> str:
    head, agents = BASE.split("---\n")
    return head + section + "---\n" + agents


def test_the_lifecycle_section_is_parsed_and_optional(tmp_path: Path) -> None:
    """Durations reach the policy; without the section there are no limits."""
    text = ("lifecycle:\n  max_key_age: 90d\n  key_warning: 14d\n  dormant_after: 30d\n"
            "  registration_ttl: 365d\n")
    assert load_policy(write(tmp_path, with_lifecycle(text))).lifecycle == LIMITS
    assert load_policy(write(tmp_path, BASE)).lifecycle == AgentLifecycle()


def test_a_warning_longer_than_the_key_age_is_refused(tmp_path: Path) -> None:
    """key_warning must fit inside max_key_age."""
    bad = "lifecycle:\n  max_key_age: 7d\n  key_warning: 7d\n"
    with pytest.raises(PolicyError, match="key_warning must be shorter than max_key_age"):
        load_policy(write(tmp_path, with_lifecycle(bad)))


def test_a_key_is_warned_before_the_limit_and_refused_after_saying_why() -> None:
    """Warned from day 76, refused from day 90 with the policy's limit in the reason."""
    key = record().keys[0]
    assert key_age_warning("a-1", key, LIMITS, NOW + 75 * DAY) is None
    warning = key_age_warning("a-1", key, LIMITS, NOW + 76 * DAY)
    assert warning is not None and warning.refused_at == NOW + 90 * DAY
    assert warning == key_age_warning("a-1", key, LIMITS, NOW + 76 * DAY)
    assert key_age_problem(key, LIMITS, NOW + 90 * DAY - timedelta(seconds=1)) is None
    refused = key_age_problem(key, LIMITS, NOW + 90 * DAY)
    assert refused is not None and refused.code is Reason.KEY_TOO_OLD
    assert "older than the policy's maximum key age of 90d" in refused.detail
    assert key_age_warning("a-1", key, LIMITS, NOW + 90 * DAY) is None
    assert key_age_problem(key, AgentLifecycle(), NOW + 900 * DAY) is None


def test_a_registration_lapses_unless_renewed_and_its_baseline_ends_with_it() -> None:
    """Lapsed a year after registration; an operator's renew moves the end; a view stops
    allowing the baseline when the registration lapses."""
    current = record()
    assert registration_ends(current, LIMITS) == NOW + 365 * DAY
    lapsed = registration_problem(current, LIMITS, NOW + 365 * DAY)
    assert lapsed is not None and lapsed.code is Reason.REGISTRATION_LAPSED
    renewed = apply_command(current, AgentCommand(
        command_id="c-renew", action="renew", agent_id="a-1", issued_at=NOW + 300 * DAY),
        Principal("operator:alice", "operator", "op-kid-01"), at=NOW + 300 * DAY, offset=5,
        limits=Limits()).record
    assert renewed is not None and renewed.change == "renewed"
    assert registration_problem(renewed, LIMITS, NOW + 365 * DAY) is None
    statement = entitlement_of(current, (READ,), policy_revision="p",
                               until=registration_ends(current, LIMITS))
    index = GrantIndex()
    index.apply(Record("permbroker.grants", 0, 0, 0, statement, None, None, b"a-1"))
    assert index.allows("a-1", READ, "", NOW + 364 * DAY).allowed
    ended = index.allows("a-1", READ, "", NOW + 365 * DAY)
    assert not ended.allowed and "registration lapsed" in ended.reason


def test_inventory_flags_dormant_agents_old_keys_and_lapsed_registrations() -> None:
    """No request for 30 days: dormant; key in its warning window or past it; lapsed."""
    current = record()
    assert lifecycle_flags(current, LIMITS, NOW + 29 * DAY, NOW + 30 * DAY) == ()
    assert lifecycle_flags(current, LIMITS, NOW, NOW + 30 * DAY) == ("dormant",)
    assert lifecycle_flags(current, LIMITS, None, NOW + 31 * DAY) == ("dormant",)
    assert lifecycle_flags(current, LIMITS, NOW + 80 * DAY, NOW + 80 * DAY) == ("key-expiring",)
    assert lifecycle_flags(current, LIMITS, NOW + 400 * DAY, NOW + 400 * DAY) == (
        "key-too-old", "registration-lapsed")
    assert lifecycle_flags(current, AgentLifecycle(), None, NOW + 900 * DAY) == ()
