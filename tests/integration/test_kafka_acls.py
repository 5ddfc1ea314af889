"""Kafka as the tests start it authenticates every client and authorizes it by role.

Nobody but the workers can write what consumers trust (grants, the JWKS, the agent registry's
record, decisions): an anonymous client cannot even log in, an agent's or a resource service's
user is refused with TOPIC_AUTHORIZATION_FAILED, and nothing reaches the log. Every role may do
exactly what its row of the topic registry says (the broker's own answer, per topic).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer, TopicCollection, TopicPartition

from broker.adapters.kafka import acls
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import admin_client, ensure_topics
from broker.adapters.kafka.bus import (
    Publisher,
    Record,
    consumer,
    end_offsets,
    producer_config,
    to_record,
)
from broker.adapters.kafka.codec import Encoded
from broker.adapters.kafka.follow import Follower
from broker.config import Settings
from broker.errors import BusError
from broker.stack.tenants import declared
from schemas import topics
from tests.support.services import Services

pytestmark = pytest.mark.integration

TRUSTED = (topics.GRANTS, topics.GRANTS_PAYMENTS, topics.JWKS, topics.AGENTS, topics.DECISIONS)
# Refusals come back at once; a client that cannot log in is given this long, not 300 s.
GIVE_UP_MS = 3000


@dataclass
class Attempt:
    """What came back from trying to write one record to each trusted topic."""

    delivered: dict[str, KafkaError | None]
    client_errors: list[KafkaError]
    seconds: float


def _attempt(kafka: KafkaAccess, key: bytes) -> Attempt:
    """Produce one record keyed ``key`` to every trusted topic as ``kafka``; wait for each."""
    client_errors: list[KafkaError] = []
    delivered: dict[str, KafkaError | None] = {}
    producer = Producer({**producer_config(kafka), "message.timeout.ms": GIVE_UP_MS,
                         "error_cb": client_errors.append})
    started = time.monotonic()
    for topic in TRUSTED:
        def report(err: KafkaError | None, _msg: object, name: str = topic.name) -> None:
            delivered[name] = err

        producer.produce(topic.name, key=key, value=b'{"forged": true}', on_delivery=report)
    left = producer.flush(GIVE_UP_MS / 1000 + 10)
    assert left == 0, f"{left} writes neither delivered nor failed"
    return Attempt(delivered, client_errors, time.monotonic() - started)


@pytest.fixture
def probe(services: Services) -> Iterator[bytes]:
    """A fresh record key; afterwards no trusted topic holds a record with it (read back as
    the admin from where each log ended before the test: the workers keep writing meanwhile)."""
    key = f"acl-probe-{uuid.uuid4().hex}".encode()
    admin = services.kafka(topics.ADMIN)
    reader = consumer(admin)
    before = {t.name: end_offsets(reader, t.name) for t in TRUSTED}
    reader.close()
    yield key
    for topic in TRUSTED:
        landed = [r for r in read_from(admin, topic.name, before[topic.name]) if r.key == key]
        assert not landed, f"a refused client's record reached {topic.name}: {landed[0]}"


@pytest.mark.parametrize("role", [topics.AGENT, topics.SERVICE])
def test_an_agent_or_a_service_cannot_write_what_consumers_trust(
    services: Services, role: str, probe: bytes,
) -> None:
    """Each write is refused by the broker's authorizer (TOPIC_AUTHORIZATION_FAILED), fast."""
    attempt = _attempt(services.kafka(role), probe)
    codes = {name: err.code() if err else None for name, err in attempt.delivered.items()}
    assert codes == dict.fromkeys((t.name for t in TRUSTED),
                                  KafkaError.TOPIC_AUTHORIZATION_FAILED)
    assert attempt.seconds < GIVE_UP_MS / 1000, "refusals should not wait for a timeout"


def test_an_anonymous_client_cannot_log_in_and_writes_nothing(
    services: Services, probe: bytes,
) -> None:
    """No SASL: the broker drops the connection; every write fails, none reaches a log."""
    anonymous = services.kafka(topics.ADMIN).anonymous()
    assert not anonymous.sasl
    attempt = _attempt(anonymous, probe)
    codes = {name: err.code() if err else None for name, err in attempt.delivered.items()}
    assert codes == dict.fromkeys((t.name for t in TRUSTED), KafkaError._MSG_TIMED_OUT)
    assert {e.code() for e in attempt.client_errors} & {
        KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._AUTHENTICATION}


def test_a_wrong_password_is_refused_at_login(services: Services, probe: bytes) -> None:
    """A known user with a guessed password: SASL authentication fails; nothing is written."""
    worker = services.kafka(topics.WORKER)
    guessed = worker.as_user(worker.username, f"guess-{uuid.uuid4().hex}")
    attempt = _attempt(guessed, probe)
    assert all(err is not None for err in attempt.delivered.values())
    assert any(e.code() == KafkaError._AUTHENTICATION for e in attempt.client_errors), \
        [e.str() for e in attempt.client_errors]


def test_a_publisher_whose_login_is_refused_says_so_naming_its_user(services: Services) -> None:
    """The product's Publisher reports the refused login (the user named), not a timeout."""
    worker = services.kafka(topics.WORKER)
    guessed = worker.as_user(worker.username, f"guess-{uuid.uuid4().hex}")
    probe = Encoded(f"acl-probe-{uuid.uuid4().hex}".encode(), b"{}", [])
    with pytest.raises(BusError, match=r"Kafka refused User:worker writing to permbroker\.grants: "
                                       r".*[Aa]uthentication"):
        Publisher(guessed, source="/tests/acl").publish_raw(topics.GRANTS.name, probe, timeout=60)


def read_from(kafka: KafkaAccess, topic: str, starts: dict[int, int]) -> list[Record]:
    """Every record of ``topic`` from ``starts`` (partition -> offset) to the end now."""
    c = consumer(kafka)
    try:
        ends = end_offsets(c, topic)
        todo = {p for p, end in ends.items() if end > starts.get(p, 0)}
        c.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in todo])
        out: list[Record] = []
        deadline = time.monotonic() + 30
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            out.append(to_record(msg, None))
            if (msg.offset() or 0) + 1 >= ends[msg.partition() or 0]:
                todo.discard(msg.partition() or 0)
        assert not todo, f"reading {topic} did not reach its end"
        return out
    finally:
        c.close()


def _authorized(kafka: KafkaAccess, name: str) -> set[str]:
    """The operations the broker says ``kafka``'s user may do on a topic (KIP-430)."""
    admin = admin_client(kafka)
    future = admin.describe_topics(TopicCollection([name]), include_authorized_operations=True,
                                   request_timeout=30)[name]
    return {op.name for op in (future.result(30).authorized_operations or [])}


def _readers(topic: topics.Topic, tenants: tuple[str, ...]) -> tuple[str, ...]:
    """The registry's readers of ``topic``; with tenants declared, the default tenant's roles
    (agent, service) read their tenant's own decision and grant topics instead of the shared."""
    return tuple(r for r in topic.readers
                 if not (tenants and r in topics.TENANT_ROLES and topics.owns(topic.name)))


@pytest.mark.parametrize("role", [r for r in topics.ROLES if r != topics.ADMIN])
def test_each_role_may_do_on_each_topic_exactly_what_the_registry_says(
    services: Services, settings: Settings, role: str,
) -> None:
    """WRITE iff the role is a writer, READ iff a reader (the suite's stack declares tenants:
    the plain agent and service roles do not read the shared decision and grant topics); a
    topic it is not named for does not even exist for it; only the workers may create (a
    namespace's grant topic)."""
    kafka = services.kafka(role)
    tenants = declared(settings.tenant_policies_dir)
    assert tenants, "the suite's stack declares tenants"
    for topic in topics.ALL_TOPICS:
        readers = _readers(topic, tenants)
        if role not in (*topic.writers, *readers, *topic.describers):
            with pytest.raises(KafkaException, match="TOPIC_AUTHORIZATION_FAILED"):
                _authorized(kafka, topic.name)
            continue
        granted = _authorized(kafka, topic.name)
        assert ("WRITE" in granted) == (role in topic.writers), (role, topic.name, granted)
        assert ("READ" in granted) == (role in readers), (role, topic.name, granted)
        creates = role in topics.GRANT_NAMESPACE_CREATORS and \
            topic.name.startswith(topics.GRANT_TOPIC_PREFIX)
        assert ("CREATE" in granted) == creates, (role, topic.name, granted)
        assert not granted & {"DELETE", "ALTER", "ALTER_CONFIGS"}, (role, topic.name, granted)


def _settled(services: Services, wanted: list[acls.Acl]) -> None:
    """Wait until the broker answering shows the rules the session applied: the controller
    has them once applied, each broker's view follows a moment later."""
    admin = services.kafka(topics.ADMIN)
    assert _wait_for(lambda: set(wanted) <= acls.existing(admin), 30), \
        sorted(set(wanted) - acls.existing(admin))


def test_the_acl_table_is_in_place_and_only_a_super_user_may_apply_it(
    services: Services, settings: Settings,
) -> None:
    """As admin, applying the table again (with the suite's tenants) creates nothing and has
    nothing left to withdraw; any other user is refused (it would be shown no ACLs at all,
    and read that as every rule missing)."""
    tenants = declared(settings.tenant_policies_dir)
    wanted = acls.table(settings.app_id, tenants=tenants)
    _settled(services, wanted)
    done = acls.apply(services.kafka(topics.ADMIN), wanted, dry_run=True,
                      withdraw=acls.withdrawn(settings.app_id, tenants))
    assert done.created == () and list(done.kept) == wanted and done.removed == ()
    for role in (topics.OPERATOR, topics.WORKER):
        with pytest.raises(BusError, match="may not list or change Kafka's ACLs"):
            acls.apply(services.kafka(role), wanted, dry_run=True)


def test_back_to_one_tenant_the_table_would_swap_the_default_tenants_topics_back(
    services: Services, settings: Settings,
) -> None:
    """A dry run of the table without tenants on the suite's cluster (which declares them):
    it would give the plain agent and service their shared decision and grant topics back
    and remove their reading of the default tenant's own topics, and change nothing else."""
    tenants = declared(settings.tenant_policies_dir)
    _settled(services, acls.table(settings.app_id, tenants=tenants))
    done = acls.apply(services.kafka(topics.ADMIN), acls.table(settings.app_id), dry_run=True,
                      withdraw=acls.withdrawn(settings.app_id, ()))
    assert set(done.created) == set(acls.withdrawn(settings.app_id, tenants))
    assert {str(a) for a in done.removed if a.operation == "READ"} == {
        "User:agent READ TOPIC permbroker.tenant.default.decisions",
        "User:service READ TOPIC permbroker.tenant.default.grants*",
        "User:operator READ TOPIC permbroker.tenant.default.decisions",
        "User:operator READ TOPIC permbroker.tenant.default.grants*"}


def _wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_follower_whose_read_is_withdrawn_says_kafka_refuses_it_and_reads_on_once_allowed(
    services: Services, caplog: pytest.LogCaptureFixture,
) -> None:
    """A client's READ withdrawn while it runs (the switch between one and several tenants):
    the follower keeps the refusal (what a waiting client reports), logs it once, and reads
    on, losing nothing, once its READ is back."""
    admin = services.kafka(topics.ADMIN)
    name = f"permbroker.test.refused-{uuid.uuid4().hex[:8]}"
    topic = topics.Topic(name, 1, "delete", topics.DAY_MS, (), "a test topic",
                         readers=(topics.AGENT,))
    read = acls.Acl(topics.AGENT, acls.TOPIC, name, acls.LITERAL, "READ")
    ensure_topics(admin, [topic])
    acls.apply(admin, acls.topic_acls(topic))
    producer = Producer(producer_config(admin))
    seen: list[bytes] = []
    follower = Follower(services.kafka(topics.AGENT), name, lambda r: seen.append(r.raw or b""),
                        on_refused=lambda r: seen.append(r.raw or b""), trust=None,
                        reader="test-follower", name="test-follower")
    try:
        assert follower.wait_ready(30)
        producer.produce(name, value=b"one")
        assert producer.flush(30) == 0
        assert follower.sync(30) and seen == [b"one"]

        # DESCRIBE stays (READ implied it): the topic is seen, its records are refused.
        acls.apply(admin, [acls.Acl(topics.AGENT, acls.TOPIC, name, acls.LITERAL, "DESCRIBE")],
                   withdraw=[read])
        with caplog.at_level(logging.ERROR, logger="permbroker.follow"):
            # Its fetches are refused from now on, with or without new records.
            assert _wait_for(lambda: bool(follower.errors.refused), 60)
            producer.produce(name, value=b"two")
            assert producer.flush(30) == 0
            time.sleep(2)  # the consumer goes on reporting it; it is logged once
        assert follower.errors.refused.startswith(
            f"Kafka refuses to let agent read {name}: ")
        assert "TOPIC_AUTHORIZATION_FAILED" in follower.errors.refused
        assert seen == [b"one"]
        assert [r.getMessage().count(name) for r in caplog.records
                if r.name == "permbroker.follow"] == [1]

        acls.apply(admin, [read])
        assert _wait_for(lambda: seen == [b"one", b"two"], 60), seen
        assert follower.errors.refused == ""
    finally:
        follower.close()
        acls.apply(admin, [], withdraw=[*acls.topic_acls(topic), acls.Acl(
            topics.AGENT, acls.TOPIC, name, acls.LITERAL, "DESCRIBE")])
        admin_client(admin).delete_topics([name], request_timeout=30)
