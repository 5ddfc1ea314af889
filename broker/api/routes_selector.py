"""Operator route: revoke by selector, with a dry run. L3. Imports fastapi, broker.

``POST /v1/operator/revoke`` with a selector (agent_id, agent_class, model_version, tenant, owner,
case_id, labels) and ``dry_run: true`` lists the agents and grants it names (absolute expiry and
time left); with ``dry_run: false`` and a reason it revokes exactly that set, each revocation
carrying the operator's assertion (audited as that operator's).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from broker.api.auth import Operator, runtime_of, spend
from broker.api.bodies import SelectorBody
from broker.api.problems import PROBLEMS, Refused
from broker.errors import BrokerError, DecisionTimeout
from broker.grants.selection import Selector
from broker.sdk.operator.selector import plan, revoke_selected

router = APIRouter(tags=["operators"], responses=PROBLEMS)


def _selector(body: SelectorBody) -> Selector:
    return Selector(body.agent_id, body.agent_class, body.model_version, body.tenant,
                    body.owner, body.case_id, tuple(sorted(body.labels.items())))


@router.post("/v1/operator/revoke")
def revoke_by_selector(body: SelectorBody, request: Request, who: Operator) -> dict[str, Any]:
    """Dry run (default) or revoke every agent the selector names."""
    runtime = runtime_of(request)
    selector, settings = _selector(body), runtime.settings
    if not selector.criteria():
        raise Refused(422, "give at least one selector criterion", kind="invalid-request")
    own = runtime.operator_tenants.get(who.principal.id)
    if own is not None and selector.tenant not in own:  # never a match in another tenant
        raise Refused(403, f"{who.principal.id} operates tenants {', '.join(sorted(own))}: "
                      "its selector names one of them (tenant)", kind="not-permitted")
    if not body.dry_run and not body.reason:
        raise Refused(422, "a reason is required to revoke (it is recorded in the audit)",
                      kind="invalid-request")
    try:
        if body.dry_run:
            return {**plan(settings, runtime.kafka, selector, runtime.verifier()).as_json(),
                    "dry_run": True}
        spend(request, who)
        done = revoke_selected(settings, runtime.kafka, selector, body.reason,
                               operator=who.name, trust=runtime.verifier(),
                               timeout=settings.decision_timeout_s * 2,
                               publisher=runtime.relay(who.assertion.token))
    except DecisionTimeout as exc:
        raise Refused(504, str(exc), kind="timeout") from exc
    except BrokerError as exc:
        raise Refused(503, f"{exc} (are Kafka and Redis up?)", kind="unavailable") from exc
    return {**done.plan.as_json(), "dry_run": False, "operation_id": done.operation_id,
            "revoked_grant_ids": list(done.revoked_grant_ids),
            "revocations": [{"agent_id": r.agent_id, "signal_id": r.signal_id,
                             "grant_ids": list(r.grant_ids),
                             "consistency_token": r.consistency_token}
                            for r in done.revocations]}
