"""Delegation, pure parts: the rule loader, the decision (subset, clamp, default deny), the
``act`` claim of a delegated grant's token, and a view denying a child once its parent ended."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.adapters.kafka.bus import Record
from broker.errors import PolicyError
from broker.grants.decide import AgentState
from broker.grants.delegation import Parties, decide_delegation
from broker.identity.tokens import GrantClaims, act_chain, act_claim, grant_claims, token_claims
from broker.policy import Policy, load_policy
from broker.sdk.resource.index import GrantIndex
from schemas.events import AgentProfile, DelegationRequested, GrantIssued, GrantRevoked
from tests.support.policy_files import BASE, write

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
A, B, C = "fraud-detector-7", "fraud-detector-8", "fraud-detector-9"
RULES = BASE.replace("deny_rules:\n", """delegation_rules:
  - id: hand-over-freeze
    from_classes: [fraud-detection]
    to_classes: [fraud-detection]
    scopes: ["payments:accounts.*"]
    max_duration: 5m
deny_rules:
""", 1)


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    return load_policy(write(tmp_path, RULES))


def _profile(policy: Policy, agent_id: str) -> AgentProfile:
    seed = policy.agent(A)
    assert seed is not None
    return seed.model_copy(update={"agent_id": agent_id})


def _parent(expires_in_s: int = 60, resources: tuple[str, ...] = ("acct-1", "acct-2"),
            agent: str = A, grant_id: str = "grant-p", delegators: tuple[str, ...] = (),
            parent: str | None = None) -> GrantIssued:
    return GrantIssued(grant_id=grant_id, agent_id=agent, request_id=f"req-{grant_id}",
                       scopes=(FREEZE, PII), resources=resources, issued_at=NOW,
                       expires_at=NOW + timedelta(seconds=expires_in_s), policy_revision="r",
                       rules=("fraud-freeze",), parent_grant_id=parent, delegators=delegators)


def _request(**extra: object) -> DelegationRequested:
    return DelegationRequested.model_validate({
        "request_id": "del-1", "agent_id": A, "parent_grant_id": "grant-p", "delegate_id": B,
        "scopes": [FREEZE], "duration_s": 30, "reason": "hand over", "requested_at": NOW,
        **extra})


def _parties(policy: Policy, parent: GrantIssued | None, **extra: object) -> Parties:
    values: dict[str, object] = {
        "parent": parent, "delegator": _profile(policy, A), "delegator_state": AgentState(),
        "delegate": _profile(policy, B), "delegate_state": AgentState(), **extra}
    return Parties(**values)  # type: ignore[arg-type]


def test_rules_load_and_an_unknown_class_is_refused(policy: Policy, tmp_path: Path) -> None:
    """delegation_rules load with their classes, scopes and maximum; a typo is an error."""
    [rule] = policy.delegation_rules
    assert (rule.id, rule.from_classes, rule.scopes, rule.max_duration_s) == (
        "hand-over-freeze", ("fraud-detection",), ("payments:accounts.*",), 300)
    with pytest.raises(PolicyError, match="unknown agent class 'ops'"):
        load_policy(write(tmp_path, RULES.replace("to_classes: [fraud-detection]",
                                                  "to_classes: [ops]")))


def test_an_over_wide_request_is_narrowed_and_clamped_to_the_parent(policy: Policy) -> None:
    """PII (no rule) denied by default deny, a foreign resource dropped, expiry = parent's."""
    out = decide_delegation(_request(scopes=[FREEZE, PII], resources=["acct-1", "acct-9"],
                                     duration_s=3600), _parties(policy, _parent(60)), policy, NOW)
    d, g = out.decision, out.grant
    assert d.outcome == "granted" and g is not None
    assert g.scopes == (FREEZE,) and g.resources == ("acct-1",) and g.agent_id == B
    assert [(x.scope, x.rule) for x in d.denied] == [(PII, "default-deny")]
    assert g.expires_at == NOW + timedelta(seconds=60) and d.clamped_by is not None
    assert d.clamped_by.startswith("parent grant grant-p")
    assert g.parent_grant_id == "grant-p" and g.delegators == (A,)
    assert any("acct-9" in r and "narrowed" in r for r in d.reasons)
    assert out.audit.kind == "grant.delegation.decided" and out.audit.inputs["grant"]


def test_the_rule_maximum_clamps_below_a_long_parent(policy: Policy) -> None:
    """A parent living an hour: the rule's 5m caps the child."""
    out = decide_delegation(_request(duration_s=3600), _parties(policy, _parent(3600)),
                            policy, NOW)
    assert out.grant is not None and out.grant.expires_at == NOW + timedelta(minutes=5)
    assert out.decision.clamped_by == "rule hand-over-freeze: max_duration"


@pytest.mark.parametrize(("case", "rule"), [
    ("not-held", "delegation-parent"), ("other-holder", "delegation-parent"),
    ("quarantined", "delegation-delegator"), ("revoked", "delegation-delegator"),
    ("self", "delegation-delegate"), ("stranger", "delegation-delegate"),
    ("foreign-resources", "delegation-subset"),
])
def test_denials_name_their_rule(policy: Policy, case: str, rule: str) -> None:
    """No parent, someone else's, a revoked or quarantined delegator, no real delegate, or no
    resource left: everything is denied, naming the rule."""
    parent, request = _parent(), _request()
    extra: dict[str, object] = {}
    if case == "not-held":
        parent = None  # type: ignore[assignment]
    elif case == "other-holder":
        parent = _parent(agent=C)
    elif case == "quarantined":
        extra["delegator_state"] = AgentState(quarantined_until=NOW + timedelta(minutes=1))
    elif case == "revoked":
        extra["delegator_state"] = AgentState(revoked_at=NOW)
    elif case == "self":
        request = _request(delegate_id=A)
    elif case == "stranger":
        extra["delegate"] = None
    else:
        request = _request(resources=["acct-9"])
    out = decide_delegation(request, _parties(policy, parent, **extra), policy, NOW)
    assert out.decision.outcome == "denied" and out.grant is None
    assert {x.rule for x in out.decision.denied} == {rule}


def test_act_claim_nests_the_chain_and_reads_back() -> None:
    """Nearest delegator outermost; a malformed claim is refused."""
    assert act_claim((B, A)) == {"sub": B, "act": {"sub": A}}
    assert act_chain(act_claim((B, A))) == (B, A) and act_chain(None) == ()
    assert act_chain({"act": {"sub": A}}) is None
    child = _parent(agent=C, grant_id="grant-c", delegators=(B, A), parent="grant-b")
    claims = token_claims(child, "payments", issuer="permbroker", now=NOW, max_ttl_s=30)
    assert isinstance(claims, dict) and claims["act"] == {"sub": B, "act": {"sub": A}}
    parsed = grant_claims(claims, "kid-1")
    assert isinstance(parsed, GrantClaims) and parsed.delegators == (B, A)
    plain = token_claims(_parent(), "payments", issuer="permbroker", now=NOW, max_ttl_s=30)
    assert isinstance(plain, dict) and "act" not in plain


def _record(event: object) -> Record:
    return Record(topic="t", partition=0, offset=0, timestamp_ms=0, event=event,  # type: ignore[arg-type]
                  error=None, raw=None)


def test_a_view_denies_a_child_once_any_grant_up_its_chain_ended() -> None:
    """Child and grandchild allowed while the chain lives; the root's revocation denies both."""
    index = GrantIndex()
    root = _parent(3600)
    child = _parent(60, agent=B, grant_id="grant-b", delegators=(A,), parent="grant-p")
    grandchild = _parent(60, agent=C, grant_id="grant-c", delegators=(B, A), parent="grant-b")
    for grant in (root, child, grandchild):
        index.apply(_record(grant))
    assert index.allows(C, FREEZE, "acct-1", NOW) and index.state(C, "grant-c", NOW) == "active"
    index.apply(_record(GrantRevoked(grant_id="grant-p", agent_id=A, revoked_at=NOW,
                                     expires_at=root.expires_at, reason="r", rule="x",
                                     cause_event_id="c")))
    for agent, gid in ((B, "grant-b"), (C, "grant-c")):
        verdict = index.allows(agent, FREEZE, "acct-1", NOW)
        assert not verdict and "no longer active" in verdict.reason
        assert index.state(agent, gid, NOW) == "ended"


def test_a_delegation_never_crosses_tenants(policy: Policy) -> None:
    """A delegate of another tenant (even of the delegator's class) is denied, naming the rule;
    within one tenant the child grant carries that tenant."""
    acme = _parties(policy, _parent(), delegator=_profile(policy, A).model_copy(
        update={"tenant": "acme"}), delegate=_profile(policy, B).model_copy(
        update={"tenant": "globex"}))
    out = decide_delegation(_request(), acme, policy, NOW)
    assert out.decision.outcome == "denied" and out.grant is None
    assert {x.rule for x in out.decision.denied} == {"delegation-delegate"}
    assert "another tenant" in " ".join(out.decision.reasons)
    same = replace(acme, delegate=acme.delegate.model_copy(update={"tenant": "acme"})
                   if acme.delegate else None)
    granted = decide_delegation(_request(), same, policy, NOW)
    assert granted.grant is not None and granted.grant.tenant == "acme"
