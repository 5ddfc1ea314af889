"""Usage budgets for resource services: ``BudgetMeter.use`` checks, counts and reports one use.

Imports adapters, core, sdk.enforce/grant_index, schemas.

A use of a budgeted scope passes only if (1) the view allows it to the agent the service
identified (``enforce.check_agent``; a grant token is the default proof), (2) Redis counts it
atomically against the grant's budget (``CONSUME``: refused at the limit, idempotent per
``use_id``, the counter expiring with the grant) and (3) the ``grant.used`` report reached
Kafka, where workers audit it and end the grant when its budget is used up. If Redis or Kafka
cannot answer, the use is refused as *unavailable* (fail closed); retry with the same ``use_id``:
a use counted before the failure is not counted twice. Scopes without a budget pass on (1) alone.
"""

from __future__ import annotations

from datetime import UTC, datetime

from broker.adapters.crypto.service_key import ServiceIdentity
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.redis.budgets import BudgetCounter
from broker.delivery.consistency import ConsistencyToken
from broker.errors import BrokerError, StoreUnavailable
from broker.grants.budgets import Use, exhausted_reason
from broker.sdk.resource.enforce import Checker, check_agent
from broker.sdk.resource.index import Verdict
from schemas import topics
from schemas.events import GrantIssued, GrantUsed


class BudgetMeter:
    """Counts uses of budgeted scopes for one resource service, on top of a grant view.

    Each report is signed with the service's own key (``service``): the workers count only
    reports an enforcement point registered in the services file signed in its own name.
    """

    def __init__(self, view: Checker, counter: BudgetCounter, publisher: Publisher, *,
                 service: ServiceIdentity) -> None:
        self.view = view
        self.service = service.name
        self._identity = service
        self._counter = counter
        self._publisher = publisher

    @classmethod
    def connect(cls, view: Checker, redis_url: str, kafka: KafkaAccess, *,
                service: ServiceIdentity) -> BudgetMeter:
        """A meter with its own Redis client and Kafka producer."""
        return cls(view, BudgetCounter.from_url(redis_url),
                   Publisher(kafka, source=f"/services/{service.name}"), service=service)

    def use(self, agent_id: str | None, scope: str, resource: str = "", *, use_id: str,
            at_least: ConsistencyToken | str | None = None) -> Verdict:
        """Check, count and report one use; an allowing verdict means: go ahead, once."""
        verdict = check_agent(self.view, agent_id, scope, resource, at_least=at_least)
        grant = verdict.grant
        if not verdict.allowed or grant is None or scope not in grant.budgets:
            return verdict
        try:
            counted = self._counter.consume(grant, scope, use_id)
        except StoreUnavailable as exc:
            return Verdict(False, f"budget store unavailable, refusing the use (fail closed): "
                           f"{exc}", unavailable=True)
        if counted.status == "gone":
            return Verdict(False, f"grant {grant.grant_id} is no longer in the grant store "
                           "(revoked, released or expired)")
        if counted.status == "unlimited":  # the stored grant has no budget for it: as checked
            return verdict
        problem = self._report(grant, scope, resource, use_id, counted)
        if problem:
            return Verdict(False, problem, unavailable=True)
        if not counted.counted:
            return Verdict(False, exhausted_reason(counted.used, counted.limit, scope)
                           + f" (grant {grant.grant_id})")
        return Verdict(True, f"use {counted.used} of {counted.limit} of {scope} under grant "
                       f"{grant.grant_id} until {grant.expires_at.isoformat()}", grant)

    def _report(self, grant: GrantIssued, scope: str, resource: str, use_id: str,
                counted: Use) -> str:
        """Publish the ``grant.used`` report; '' once Kafka acknowledged it, else why not."""
        event = GrantUsed(
            use_id=use_id, agent_id=grant.agent_id, grant_id=grant.grant_id, scope=scope,
            resource=resource, service=self.service,
            outcome="consumed" if counted.counted else "refused",
            used=counted.used, limit=counted.limit, used_at=datetime.now(UTC))
        try:
            self._publisher.publish_raw(topics.USAGE.name, self._identity.sign(
                encode(event, source=f"/services/{self.service}")))
        except BrokerError as exc:
            if not counted.counted:
                return ""  # a refusal stays a refusal; only its report is missing
            return (f"use {use_id} was counted but its report did not reach Kafka ({exc}); "
                    "refusing it (fail closed): retry with the same use id")
        return ""

    def close(self) -> None:
        """Close the Redis client (the view and producer belong to the caller)."""
        self._counter.close()
