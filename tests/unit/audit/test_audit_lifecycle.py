"""The audit of renewals and releases: replay as of T, and redaction."""

from __future__ import annotations

import json
from datetime import timedelta

from broker.audit.redact import Redactor
from broker.audit.views import grants_as_of
from schemas.events import AuditRecord
from tests.support.redaction import KEY, NOW, decided_record, request

TOKEN = "ct1:permbroker.grants@3:17,permbroker.grants.payments@3:4"


def lifecycle(kind: str, outcome: str, at: int, inputs: dict[str, object]) -> AuditRecord:
    return AuditRecord(audit_id=f"audit-{kind}-{at}", kind=kind, agent_id="fraud-detector-7",
                       occurred_at=NOW + timedelta(seconds=at), subject_id=f"req-{kind}",
                       outcome=outcome, inputs=inputs)


def test_replay_as_of_follows_renewals_and_releases() -> None:
    """A renewal recorded by T moves the expiry replay reports; a release ends the grant."""
    granted = decided_record(request())
    gid = str(granted.inputs["decision"]["grant_id"])  # type: ignore[index]
    first = grants_as_of([granted], NOW + timedelta(seconds=1))
    assert [g.grant_id for g in first] == [gid]
    original = first[0].expires_at
    renewed_until = original + timedelta(seconds=20)
    renewal = lifecycle("grant.renewal", "renewed", 10, {
        "decision": {"grant_id": gid, "expires_at": renewed_until.isoformat()}})
    release = lifecycle("grant.release", "released", 30, {"release": {"grant_id": gid}})
    records = [granted, renewal, release]
    assert grants_as_of(records, NOW + timedelta(seconds=5))[0].expires_at == original
    later = grants_as_of(records, original + timedelta(seconds=1))
    assert [(g.grant_id, g.expires_at) for g in later] == [(gid, renewed_until)]
    assert grants_as_of(records, NOW + timedelta(seconds=31)) == []


def test_renewal_audit_hides_resources_and_reason_but_keeps_the_consistency_token() -> None:
    """grant.resources and the renewal's reason become HMACs; a consistency token stays clear."""
    record = lifecycle("grant.renewal", "renewed", 1, {
        "renewal": {"reason": "ring around acct-4411-0923 still active"},
        "grant": {"resources": ["acct-4411-0923"]},
        "consistency_token": TOKEN,
    }).model_copy(update={"reasons": ("narrowed to 1 resource(s): acct-4411-0923",)})
    redacted = Redactor.configured(KEY, free_text=True).redact(record)
    text = json.dumps(redacted.model_dump(mode="json"))
    assert "acct-4411" not in text and "ring around" not in text
    assert redacted.inputs["consistency_token"] == TOKEN
