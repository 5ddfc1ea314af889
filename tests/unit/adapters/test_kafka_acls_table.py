"""The ACL table is derived from the topic registry alone, grants no more than it names, and the
docs' topic table (docs/operations.md) says the same about who may write and read each topic."""

from __future__ import annotations

import re
from pathlib import Path

from broker.adapters.kafka.acls import GROUP, LITERAL, PREFIXED, TOPIC, Acl, from_binding, table
from schemas import topics

ROOT = Path(__file__).resolve().parents[3]
TRUSTED = (topics.GRANTS, topics.AGENTS, topics.JWKS, topics.DECISIONS, topics.AUDIT,
           topics.DEAD_LETTER)


def _writers(acls: list[Acl], name: str) -> set[str]:
    return {a.role for a in acls if a.resource == TOPIC and a.name == name
            and a.operation == "WRITE"}


def test_only_the_workers_may_write_what_every_consumer_trusts() -> None:
    """Grants (every namespace too), the registry's record, JWKS, decisions, audit, DLQ."""
    acls = table("permbroker")
    for topic in TRUSTED:
        assert _writers(acls, topic.name) == {topics.WORKER}, topic.name
    assert _writers(acls, topics.GRANT_TOPIC_PREFIX) == {topics.WORKER}
    assert {a.role for a in acls if a.operation == "CREATE"} == {topics.WORKER}


def test_every_rule_comes_from_the_registry_or_the_group_rules() -> None:
    """Literal topic rules are exactly the registry's writers/readers/describers; the grant
    namespaces are one prefix (no literal rule per namespace); no rule names admin."""
    acls = table("permbroker")
    assert acls == sorted(set(acls))
    literal = {(a.role, a.name, a.operation) for a in acls
               if a.resource == TOPIC and a.pattern == LITERAL}
    expected = {(role, t.name, op) for t in topics.ALL_TOPICS
                if not t.name.startswith(topics.GRANT_TOPIC_PREFIX)
                for op, roles in (("WRITE", t.writers), ("READ", t.readers),
                                  ("DESCRIBE", t.describers)) for role in roles}
    assert literal == expected
    prefixed = {(a.role, a.operation) for a in acls
                if a.resource == TOPIC and a.pattern == PREFIXED}
    assert prefixed == {(topics.WORKER, "WRITE"), (topics.WORKER, "CREATE"),
                        (topics.SERVICE, "READ"), (topics.OPERATOR, "READ")}
    assert topics.ADMIN not in {a.role for a in acls}
    assert {a.role for a in acls} <= set(topics.ROLES)


def test_groups_each_role_its_prefix_the_workers_their_app_id() -> None:
    """Every role reads in its own group prefix; the workers' group and transactional ids are
    the app id's; resource services may only describe the workers' group."""
    acls = table("permbroker-demo")
    groups = {(a.role, a.name, a.operation) for a in acls if a.resource == GROUP}
    assert {(r, topics.group_prefix(r), "READ") for r in topics.ROLES if r != topics.ADMIN} \
        <= groups
    assert groups - {(r, topics.group_prefix(r), "READ") for r in topics.ROLES} == {
        (topics.WORKER, "permbroker-demo", "READ"),
        (topics.SERVICE, "permbroker-demo", "DESCRIBE")}
    assert [(a.role, a.name, a.operation) for a in acls if a.resource == "TRANSACTIONAL_ID"] == [
        (topics.WORKER, "permbroker-demo", "WRITE")]
    assert all(a.pattern == PREFIXED for a in acls if a.resource != TOPIC)


def test_every_topic_has_a_writer_and_a_reader_and_roles_are_known() -> None:
    """A topic nobody may write (or read) would be a typo in the registry."""
    for topic in topics.ALL_TOPICS:
        assert topic.writers and topic.readers, topic.name
        named = {*topic.writers, *topic.readers, *topic.describers}
        assert named <= set(topics.ROLES) - {topics.ADMIN}, topic.name


def test_a_rule_survives_the_round_trip_through_confluent_kafka() -> None:
    """What ``apply`` creates is recognised when the cluster lists it back (idempotence)."""
    for acl in table("permbroker"):
        assert from_binding(acl.binding()) == acl


def _docs_table() -> dict[str, tuple[set[str], set[str]]]:
    text = (ROOT / "docs" / "operations.md").read_text()
    rows: dict[str, tuple[set[str], set[str]]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`permbroker."):
            name = re.match(r"`([^`]+)`", cells[0])
            assert name is not None
            rows[name.group(1)] = (set(re.findall(r"`(\w+)`", cells[2])),
                                   set(re.findall(r"`(\w+)`", cells[3])))
    return rows


def test_the_docs_topic_table_says_who_may_write_and_read_each_topic() -> None:
    """One row per topic of the registry (the grant namespaces as one), roles as registered."""
    rows = _docs_table()
    namespace = topics.grant_topic("<namespace>")
    registry = [t for t in topics.ALL_TOPICS if not t.name.startswith(topics.GRANT_TOPIC_PREFIX)]
    expected = {t.name: (set(t.writers), set(t.readers)) for t in [*registry, namespace]}
    assert rows == expected
