"""Per-agent lanes in the worker: many agents at once on a partition, each agent's in order."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import redis

from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.codec import encode
from broker.adapters.redis import keyspace as keys
from broker.adapters.redis import records
from broker.grants.decide import derive_id
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import EscalationDecided, ReleaseDecided, ReleaseRequested
from tests.support.factories import fraud_request
from tests.support.taps import Tap

pytestmark = pytest.mark.integration


def test_each_agents_messages_are_handled_in_order_while_agents_interleave(
    worker: WorkerProcess,
    publisher: Publisher,
    tap: Callable[[str], Tap],
    rclient: redis.Redis,
    agents: Callable[[str], str],
) -> None:
    """Grant then release, for 12 agents in one burst: every release finds its grant (order kept
    per agent), every request is decided once, and each record ends up flagged published."""
    decisions = tap(topics.DECISIONS.name)
    pool = [agents("f") for _ in range(12)]
    requests = [fraud_request(agent) for agent in pool]
    releases = [
        ReleaseRequested(request_id=f"release-{uuid.uuid4()}", agent_id=r.agent_id,
                         grant_id=derive_id("grant", r.request_id, r.agent_id),
                         reason="done", requested_at=datetime.now(UTC))
        for r in requests
    ]
    burst = [m for pair in zip(requests, releases, strict=True) for m in pair]
    publisher.publish_many(topics.ESCALATIONS.name, [encode(m, source="/tests") for m in burst])
    wanted = {r.request_id for r in releases}
    answers = decisions.wait_for(ReleaseDecided, lambda d: d.request_id in wanted,
                                 count=len(wanted), timeout=120)
    assert sorted(a.outcome for a in answers) == ["released"] * len(pool)
    granted = decisions.events(EscalationDecided,
                               lambda d: d.request_id in {r.request_id for r in requests})
    assert len(granted) == len(requests)
    assert {d.outcome for d in granted} == {"granted"}
    for r in requests:
        raw = rclient.get(keys.decision(r.agent_id, r.request_id))
        assert raw is not None and records.unpack(raw)[1] is True
        assert rclient.pexpiretime(keys.decision(r.agent_id, r.request_id)) > 0
