"""Sensitive values in audit records are stored as keyed HMACs, and replay still reproduces."""

from __future__ import annotations

import hashlib
import hmac
import json

from broker.audit.redact import HMAC_RE, Redactor, hmac_value
from broker.audit.replay import Decided, reproduce
from schemas.events import AuditRecord, EscalationDecided
from tests.support.redaction import JWT, KEY, NOW, PEM, POLICY, decided_record, request


def strings(data: object) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in strings(v)]
    return [data] if isinstance(data, str) else []


def test_hmac_is_keyed_sha256_of_the_value() -> None:
    """`audit hash VALUE` is HMAC-SHA256 under the audit key, hex, with a prefix."""
    expected = hmac.new(KEY, b"acct-1", hashlib.sha256).hexdigest()
    assert hmac_value(KEY, "acct-1") == f"hmac-sha256:{expected}"
    assert hmac_value(b"\x02" * 32, "acct-1") != hmac_value(KEY, "acct-1")


def test_sensitive_values_never_stay_in_clear() -> None:
    """Resources, case ids, secret-named signals, JWTs and free text leave no clear trace."""
    record = Redactor.configured(KEY, free_text=True).redact(decided_record(request()))
    text = json.dumps(record.model_dump(mode="json"))
    for secret in ("acct-4411-0923", "acct-4411-7710", "case-17", "sk-live-123", JWT, "ring"):
        assert secret not in text, secret
    assert record.inputs["request"]["resources"] == [  # type: ignore[index]
        hmac_value(KEY, "acct-4411-0923"), hmac_value(KEY, "acct-4411-7710")]
    assert any(hmac_value(KEY, "acct-4411-0923") in r for r in record.reasons)
    assert f"jwt {hmac_value(KEY, JWT)}" == record.inputs["request"]["signals"]["note"]  # type: ignore[index]


def test_ids_scopes_rules_and_numbers_stay_readable() -> None:
    """What an operator searches and reads by is untouched."""
    record = Redactor.configured(KEY, free_text=True).redact(decided_record(request()))
    req = record.inputs["request"]
    assert isinstance(req, dict)
    assert req["request_id"] == "req-1" and req["agent_id"] == "fraud-detector-7"
    assert req["scopes"] == ["payments:accounts.freeze", "crm:customer.pii.read"]
    assert req["confidence"] == 0.95 and record.rules == ("fraud-freeze-on-pattern",)
    assert record.subject_id == "req-1" and record.agent_id == "fraud-detector-7"


def test_free_text_stays_clear_unless_configured() -> None:
    """Reasons are free text: stored as HMACs only when configured."""
    plain = Redactor.configured(KEY, free_text=False).redact(decided_record(request()))
    assert plain.inputs["request"]["reason"].startswith("ring around hmac-sha256:")  # type: ignore[index]


def test_redaction_is_idempotent() -> None:
    """Redacting twice changes nothing the second time (an HMAC is never hashed again)."""
    redactor = Redactor.configured(KEY, free_text=True)
    once = redactor.redact(decided_record(request()))
    assert redactor.redact(once) == once


def test_secret_shapes_are_found_anywhere() -> None:
    """A PEM private key or a JWT in any input is replaced, whatever the field is called."""
    record = AuditRecord(audit_id="a-1", kind="input.x", agent_id=None, occurred_at=NOW,
                         subject_id="s", outcome="noted", inputs={"blob": f"x {PEM} y",
                                                                   "deep": [{"v": JWT}]})
    out = Redactor(KEY).redact(record)
    assert all("PRIVATE KEY" not in s and "eyJ" not in s for s in strings(out.inputs))
    assert all(HMAC_RE.match(s) for s in strings(out.inputs["deep"]))


def test_a_redacted_decision_replays_to_the_recorded_decision() -> None:
    """Deciding again from the redacted inputs gives the redacted decision, field for field."""
    record = Redactor.configured(KEY, free_text=True).redact(decided_record(request()))
    recorded = EscalationDecided.model_validate(record.inputs["decision"])
    assert recorded.outcome == "granted"
    assert reproduce(Decided(record, recorded), POLICY) == recorded
