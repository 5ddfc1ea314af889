"""Delegation held for approval on the live stack: a rule's quorum decides it through the
approvals machinery; the delegator's and the delegate's own votes never count; approval
creates the child under the usual checks, and a parent that ended meanwhile denies it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.config import Settings
from broker.sdk.operator.approvals import Approver
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import ApprovalVoted, AuditRecord, DelegationDecided, EscalationPending
from tests.support.approval_policy import DELEGATE, requester, verifier
from tests.support.enforcement import FREEZE, fraud_grant
from tests.support.identities import Registrar, agent_client, shared_trust
from tests.support.taps import Tap

pytestmark = pytest.mark.integration
WAIT = 90.0  # generous: several engineers share two cores
RULE = "bulk-hands-freeze-on-approval"


def _refused(audit: Tap, vote: ApprovalVoted) -> AuditRecord:
    """The refusal of a vote: by the identity gate (a vote signed by the requester itself) or
    by the approvals machinery (the delegate's own)."""
    [found, *_] = audit.wait_for(AuditRecord, lambda r: (
        r.kind == "identity.rejected" and r.subject_id == vote.vote_id) or (
        r.kind == "approval.voted" and r.subject_id == vote.request_id
        and r.outcome == "refused" and vote.approver in " ".join(r.reasons)), timeout=WAIT)
    return found


def test_a_held_delegation_is_granted_on_quorum_and_denied_once_the_parent_ended(
    worker: object, settings: Settings, agents: Callable[[str], str], run_id: str,
    registrar: Registrar, tap: Callable[[str], Tap],
) -> None:
    """Held (pending notice naming quorum 2); the delegator's and the delegate's votes are
    refused as self-approval; two verifiers grant it: the child is within its parent and
    allowed at a view. A second delegation is approved after the parent was released: denied
    (delegation-parent), no child."""
    parent_agent = agents("b")
    delegate = registrar.ensure(requester(run_id, "a", DELEGATE))
    keys = AgentKeyStore.from_settings(settings)
    access = role_access(settings, topics.AGENT)
    for n in (0, 1):
        registrar.ensure(verifier(run_id, n))
    audit = tap(topics.AUDIT_RAW.name)

    def vote(agent_id: str, request_id: str) -> ApprovalVoted:
        return Approver.agent(agent_id, access, keys=keys).approve(request_id, parent_agent,
                                                                    "ok")

    with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings)) as view, \
            agent_client(settings, parent_agent) as a:
        assert view.wait_ready(30)
        parent = fraud_grant(a, (FREEZE,))
        assert parent.grant_id and parent.expires_at
        rid = a.send_delegation(parent.grant_id, delegate, [FREEZE], resources=["acct-1"],
                                duration_s=3600, reason="hand over with sign-off")
        pending = a.await_pending(rid, timeout=WAIT)
        assert isinstance(pending, EscalationPending), pending
        assert pending.quorum == 2 and RULE in pending.matched_rules
        assert pending.agent_id == parent_agent and pending.scopes == (FREEZE,)
        own = vote(parent_agent, rid)  # the delegator
        received = vote(delegate, rid)  # the delegate, although listed as an approver
        assert _refused(audit, own).rules == ("identity:self-approval",)
        assert _refused(audit, received).rules == ("approval:self",)
        vote(verifier(run_id, 0), rid)
        vote(verifier(run_id, 1), rid)
        d = a.await_delegation(rid, timeout=WAIT)
        assert d.outcome == "granted" and d.grant_id and d.consistency_token, d.reasons
        assert d.granted_scopes == (FREEZE,) and d.resources == ("acct-1",)
        assert d.expires_at is not None and d.expires_at <= parent.expires_at
        assert any("approved by" in r and verifier(run_id, 1) in r for r in d.reasons)
        assert view.allows(delegate, FREEZE, "acct-1", at_least=d.consistency_token)
        [child] = [g for g in view.active(delegate) if g.grant_id == d.grant_id]
        assert child.parent_grant_id == parent.grant_id and child.delegators == (parent_agent,)

        late = a.send_delegation(parent.grant_id, delegate, [FREEZE], duration_s=60,
                                 reason="one more")
        assert isinstance(a.await_pending(late, timeout=WAIT), EscalationPending)
        released = a.release(parent.grant_id, reason="done")
        assert released.outcome == "released"
        vote(verifier(run_id, 0), late)
        vote(verifier(run_id, 1), late)
        denied = a.await_delegation(late, timeout=WAIT)
    assert isinstance(denied, DelegationDecided)
    assert denied.outcome == "denied" and denied.grant_id is None
    assert {x.rule for x in denied.denied} == {"delegation-parent"}, denied.denied
