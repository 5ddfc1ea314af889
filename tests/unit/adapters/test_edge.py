"""The decode edge (broker/adapters/kafka/edge.py) with a RecordTrust: what each reader accepts.

Every poison on every topic is refused with a reason and never raises; a broker record is
accepted only when signed by a key of the chain (the anchor's here), binding its exact bytes;
an enforcement point's record only when signed by its own registered key in its own name;
refusals are counted per reader, topic and reason and served as a metric.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from broker.adapters.crypto.directory import add_principal
from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.trust import SERVICES_FILE, RecordTrust, ServiceDirectory
from broker.adapters.kafka import codec, edge
from broker.identity.keychain import KeyChain
from schemas import topics
from schemas.events import AuditRecord, GrantIssued, RevocationAcknowledged
from schemas.signing import SERVICE_PREFIX
from tests.support.faults.poisons import KINDS, poisons, shown, valid_for
from tests.support.wire import SAMPLES

AGENT = "fraud-detector-7"
BROKER = SigningKey.generate()
TOPICS = (topics.ESCALATIONS.name, topics.RISK.name, topics.APPROVALS.name, topics.GRANTS.name,
          topics.GRANTS_PAYMENTS.name, topics.DECISIONS.name, topics.AGENTS.name,
          topics.JWKS.name, topics.REVOCATION_ACKS.name, topics.USAGE.name)


def _trust(tmp_path: Path, *services: tuple[str, SigningKey]) -> RecordTrust:
    path = tmp_path / "services.json"
    for name, key in services:
        add_principal(path, SERVICE_PREFIX + name, key.jwk, SERVICES_FILE)
    return RecordTrust(KeyChain("permbroker", [BROKER.jwk]), services=ServiceDirectory(path))


def _read(topic: str, m: codec.Encoded, trust: RecordTrust | None,
          reader: str = "test") -> edge.Record:
    return edge.read(topic, 0, 7, 1_700_000_000_000, m.key, m.value, m.headers, trust=trust,
                     reader=reader)


@pytest.mark.parametrize("topic", TOPICS)
def test_every_poison_on_every_topic_is_refused_with_a_reason_never_raised(
    topic: str, tmp_path: Path
) -> None:
    """200 kB nesting, a key with a newline, bad UTF-8, 1 MB, a tombstone, an unknown major
    version, NaN, the wrong event type: refused, each with its reason and origin."""
    trust = _trust(tmp_path)
    for kind, m in poisons(topic, AGENT):
        rec = _read(topic, m, trust)
        assert rec.event is None and rec.reason and rec.error, f"{kind} accepted: {shown(m)}"
        assert rec.origin == f"{topic}/0/7" and not rec.authentic
    assert trust.refusals.total("test", topic) == len(KINDS)


def test_signed_poisons_are_refused_after_their_signature_and_mark_themselves_authentic(
    tmp_path: Path,
) -> None:
    """Signed by the broker but unreadable: refused as unreadable, flagged authentic (a view
    fails closed for its agent); a record of another type on a grant topic: wrong-topic."""
    trust = _trust(tmp_path)
    for kind, m in poisons(topics.GRANTS.name, AGENT):
        if kind in ("invalid-utf8", "tombstone"):
            continue  # nothing the broker writes: its signer refuses to sign them
        rec = _read(topics.GRANTS.name, sign_message(m, BROKER, "permbroker"), trust)
        assert rec.event is None, kind
        if kind == "1MB":  # refused by its size, before its signature is even read
            assert not rec.authentic and rec.reason == "too-large"
        else:  # a key with a newline is bound by the signature, and names no agent in full
            assert rec.authentic and rec.signer == "permbroker", (kind, rec.reason)
    wrong = sign_message(codec.encode(SAMPLES[AuditRecord], source="/t"), BROKER, "permbroker")
    assert _read(topics.GRANTS.name, wrong, trust).reason == "wrong-topic"


def test_a_broker_record_counts_only_when_the_chain_vouches_for_its_exact_bytes(
    tmp_path: Path,
) -> None:
    """Unsigned, an unknown key, other bytes, another issuer: refused; the real one accepted."""
    trust = _trust(tmp_path)
    grant = codec.encode(valid_for(topics.GRANTS.name, AGENT), source="/t")
    signed = sign_message(grant, BROKER, "permbroker")
    ok = _read(topics.GRANTS.name, signed, trust)
    assert isinstance(ok.event, GrantIssued) and ok.authentic and ok.kid == BROKER.kid
    cases = {
        "unsigned": grant,
        "unknown-kid": sign_message(grant, SigningKey.generate(), "permbroker"),
        "tampered": codec.Encoded(signed.key, signed.value + b" ",
                                  signed.headers),
    }
    for reason, m in cases.items():
        assert _read(topics.GRANTS.name, m, trust).reason == reason
    other_issuer = sign_message(grant, BROKER, "someone-else")
    assert _read(topics.GRANTS.name, other_issuer, trust).reason == "tampered"
    assert _read(topics.GRANTS.name, grant, None).event is not None  # a tap reads it all


def test_an_enforcement_point_speaks_only_for_itself_with_its_registered_key(
    tmp_path: Path,
) -> None:
    """An ack counts when signed by the point it names; another point's key, an unregistered
    key or no signature: refused."""
    payments, crm = SigningKey.generate(), SigningKey.generate()
    trust = _trust(tmp_path, ("payments", payments), ("crm", crm))
    ack = SAMPLES[RevocationAcknowledged].model_copy(update={"enforcement_point": "payments"})
    m = codec.encode(ack, source="/t")
    topic = topics.REVOCATION_ACKS.name
    assert _read(topic, sign_message(m, payments, "service:payments"), trust).event == ack
    assert _read(topic, sign_message(m, crm, "service:crm"), trust).reason == "not-permitted"
    assert _read(topic, sign_message(m, BROKER, "service:payments"), trust).reason == \
        "unknown-kid"
    assert _read(topic, m, trust).reason == "unsigned"


def test_refusals_are_counted_logged_with_their_origin_and_served_as_a_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Each refusal counts; the log names the origin (rate limited); the metric has labels."""
    trust = _trust(tmp_path)
    unsigned = codec.encode(valid_for(topics.GRANTS.name, AGENT), source="/t")
    with caplog.at_level("WARNING", logger="permbroker.edge"):
        for _ in range(5):
            _read(topics.GRANTS.name, unsigned, trust, reader="grant-view")
    assert trust.refusals.counts() == {("grant-view", topics.GRANTS.name, "unsigned"): 5}
    assert len(caplog.records) == 1 and f"{topics.GRANTS.name}/0/7" in caplog.text
    recent = trust.refusals.recent()
    assert len(recent) == 5 and recent[-1].as_dict()["origin"] == f"{topics.GRANTS.name}/0/7"
    registry = CollectorRegistry()
    registry.register(edge.RefusalCollector(trust.refusals))
    text = generate_latest(registry).decode()
    assert ('permbroker_records_refused_total{consumer="grant-view",reason="unsigned",'
            f'topic="{topics.GRANTS.name}"}} 5.0') in text
