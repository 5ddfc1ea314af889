"""Operator route: an agent's behaviour profile. L3. Imports fastapi, broker (adapters, policy).

``GET /v1/operator/agents/{agent_id}/stats`` returns what ``permbroker agents stats --json``
prints (``broker.behaviour.stats.report``); 404 when the agent has no profile.
``GET /v1/operator/classes/{class}/models/{version}/stats?tenant=T``: ``agents class-stats
--json`` (one tenant's agents of the class; an operator scoped to tenants asks its own).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request

from broker.adapters.redis.stats.profiles import ProfileStore
from broker.api.auth import Operator, OperatorOfAgent, runtime_of
from broker.api.bodies import AgentIdPath, LabelPath, TenantQuery
from broker.api.problems import PROBLEMS, Refused
from broker.behaviour.stats import report
from broker.errors import BrokerError, PolicyError
from broker.identity.tenants import asked_tenant, visible
from broker.policy import load_policy

router = APIRouter(tags=["operators"], responses=PROBLEMS)


@router.get("/v1/operator/agents/{agent_id}/stats")
async def stats(agent_id: AgentIdPath, request: Request, _who: OperatorOfAgent
                ) -> dict[str, Any]:
    """Request, grant and denial counts in the detectors' windows, hours, scopes, patterns."""
    runtime = runtime_of(request)
    if runtime.store is None:
        raise Refused(503, "the API is not connected to Redis yet", kind="unavailable")
    store = ProfileStore(runtime.store.client)
    try:
        profile, _position = await store.load(agent_id)
        ttl = await store.ttl_ms(agent_id)
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Redis up?)", kind="unavailable") from exc
    if profile is None:
        raise Refused(404, f"no behaviour profile for agent {agent_id}", kind="not-found")
    try:
        detectors = load_policy(runtime.settings.policy_path).detectors
    except PolicyError:
        detectors = None
    return report(agent_id, profile, datetime.now(UTC), detectors, ttl)


@router.get("/v1/operator/classes/{agent_class}/models/{model_version}/stats")
async def class_stats(agent_class: LabelPath, model_version: LabelPath, request: Request,
                      who: Operator, tenant: TenantQuery = None) -> dict[str, Any]:
    """Requests, grants and denials of one tenant's agents of a class on one model version, in
    the detectors' windows. ``tenant`` defaults to the operator's one tenant when it is scoped
    to one, else to the default tenant; an operator scoped to tenants is refused any other."""
    runtime = runtime_of(request)
    own = runtime.operator_tenants.get(who.principal.id)
    tenant = asked_tenant(own, tenant)
    if not visible(own, tenant):
        raise Refused(403, f"{who.principal.id} operates tenants {', '.join(sorted(own or ()))}, "
                      f"not {tenant}", kind="not-permitted")
    if runtime.store is None:
        raise Refused(503, "the API is not connected to Redis yet", kind="unavailable")
    try:
        detectors = load_policy(runtime.settings.policy_path).detectors
    except PolicyError as exc:
        raise Refused(503, f"the policy does not load: {exc}", kind="unavailable") from exc
    if detectors is None:
        raise Refused(404, "the policy has no detectors section: no class profiles",
                      kind="not-found")
    try:
        return await ProfileStore(runtime.store.client).group_stats(
            agent_class, model_version, detectors, datetime.now(UTC), tenant)
    except BrokerError as exc:
        raise Refused(503, f"{exc} (is Redis up?)", kind="unavailable") from exc

