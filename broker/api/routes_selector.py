"""Operator route: revoke by selector, with a dry run. L3. Imports fastapi, broker.

``POST /v1/operator/revoke`` with a selector (agent_id, agent_class, model_version, tenant, owner,
case_id, labels) and ``dry_run: true`` lists the agents and grants it names (absolute expiry and
time left); with ``dry_run: false`` and a reason it revokes exactly that set (operator token).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import Field

from broker.api.auth import require_operator
from broker.api.routes_agents import Body, runtime_of
from broker.errors import BrokerError, DecisionTimeout
from broker.grants.selection import Selector
from broker.sdk.operator.selector import plan, revoke_selected

router = APIRouter(tags=["operators"])
Text = Annotated[str, Field(min_length=1, max_length=128)]


class SelectorBody(Body):
    agent_id: Text | None = None
    agent_class: Text | None = None
    model_version: Text | None = None
    tenant: Text | None = None
    owner: Text | None = None
    case_id: Text | None = None
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    reason: Annotated[str, Field(max_length=2000)] = ""
    dry_run: bool = True

    def selector(self) -> Selector:
        return Selector(self.agent_id, self.agent_class, self.model_version, self.tenant,
                        self.owner, self.case_id, tuple(sorted(self.labels.items())))


@router.post("/v1/operator/revoke")
def revoke_by_selector(
    body: SelectorBody, request: Request, operator: Annotated[str, Depends(require_operator)],
) -> dict[str, Any]:
    """Dry run (default) or revoke every agent the selector names."""
    runtime = runtime_of(request)
    selector, settings = body.selector(), runtime.settings
    if not selector.criteria():
        raise HTTPException(422, "give at least one selector criterion")
    if not body.dry_run and not body.reason:
        raise HTTPException(422, "a reason is required to revoke (it is recorded in the audit)")
    try:
        if body.dry_run:
            return {**plan(settings, runtime.kafka, selector, runtime.verifier()).as_json(),
                    "dry_run": True}
        done = revoke_selected(settings, runtime.kafka, selector, body.reason, operator=operator,
                               trust=runtime.verifier(), timeout=settings.decision_timeout_s * 2)
    except DecisionTimeout as exc:
        raise HTTPException(504, str(exc)) from exc
    except BrokerError as exc:
        raise HTTPException(503, f"{exc} (are Kafka and Redis up?)") from exc
    return {**done.plan.as_json(), "dry_run": False, "operation_id": done.operation_id,
            "revoked_grant_ids": list(done.revoked_grant_ids),
            "revocations": [{"agent_id": r.agent_id, "signal_id": r.signal_id,
                             "grant_ids": list(r.grant_ids),
                             "consistency_token": r.consistency_token}
                            for r in done.revocations]}
