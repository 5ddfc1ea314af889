"""Worker faults on the session services: kill -9 mid-burst, a rebalance mid-burst, a stall."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from broker.adapters.kafka.bus import Publisher
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.stack.worker import WorkerProcess
from schemas import topics
from tests.support.factories import fraud_request
from tests.support.faults.helpers import Ledger, worker_counters
from tests.support.faults.report import Figures
from tests.support.taps import Tap
from tests.support.waits import wait_until

TapFactory = Callable[[str], Tap]


def _moved_expiries(client: redis.Redis, ledger: Ledger) -> int:
    """Grants whose Redis key does not expire exactly at the expires_at first announced."""
    first: dict[str, tuple[str, int]] = {}
    for g in ledger.issued():
        first.setdefault(g.grant_id, (g.agent_id, int(g.expires_at.timestamp() * 1000)))
    moved = 0
    for gid, (agent, pxat) in first.items():
        got = client.pexpiretime(keys.grant(agent, gid))
        moved += got not in (pxat, -2)  # -2: gone (revoked/expired) is no move
    return moved


@pytest.mark.criterion("1")
def test_kill_9_at_40_percent_of_5000_loses_and_duplicates_nothing(
    worker: WorkerProcess, settings: Settings, publisher: Publisher, tap: TapFactory,
    rclient: redis.Redis, agents: Callable[[str], str], figures: Figures,
) -> None:
    """kill -9 at ~40% of 5,000 requests: 0 lost, 0 duplicate grants, redeliveries are no-ops."""
    pool = [agents("b") for _ in range(50)]
    requests = [fraud_request(pool[i % len(pool)]) for i in range(5000)]
    ledger = Ledger((r.request_id for r in requests), tap(topics.DECISIONS.name),
                    tap(topics.GRANTS.name))
    publisher.publish_many(topics.ESCALATIONS.name, requests, timeout=120)
    wait_until(lambda: len(ledger.decided()) >= 2000, 300, "2,000 decisions before the kill")
    worker.kill()
    at_kill = len(ledger.decided())
    worker.start()
    worker.wait_ready()
    wait_until(lambda: ledger.decided() == ledger.wanted, 400, "every request decided")
    after = worker_counters(settings.metrics_port)
    conflicting, two_grants, changed = ledger.conflicts()
    granted = {d.request_id for d in ledger.decisions() if d.outcome == "granted"}
    figures.check("kill point (share of the burst decided)", f"{at_kill / 50:.0f}%",
                  "30%..60%", 1500 <= at_kill <= 3000)
    figures.equal("lost decisions", len(ledger.wanted - ledger.decided()), 0)
    figures.equal("requests with two different decisions", conflicting, 0)
    figures.equal("requests with two distinct grants", two_grants, 0)
    figures.equal("grants announced with different contents", changed, 0)
    figures.equal("grant keys whose expiry moved", _moved_expiries(rclient, ledger), 0)
    figures.equal("requests granted (policy grants all)", len(granted), 5000)
    redelivered = after.get("duplicates", 0) + after.get("recovered", 0)
    figures.check("redelivered after restart (recorded decision reused)", redelivered,
                  "any; each a no-op", True)
    figures.check("identical grant re-announcements (at-least-once)", ledger.reannounced(),
                  "any; same id", True)
    figures.verify()
