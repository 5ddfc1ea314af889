"""Counts over the whole grant view for metrics: live grants, quarantined agents. Imports redis.

Synchronous on purpose: it runs in the metrics server's thread at scrape time, so what it reports
is the view as it is, with no second bookkeeping to drift from it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import cast

from broker.adapters.redis import keyspace as keys
from broker.adapters.redis.calls import close, sync_client, translated

# Agent id -> its class (None: unknown to the registry, reported as "unknown").
ClassOf = Callable[[str], str | None]
BATCH = 500


class Census:
    """Reads the grant view's indexes (never a grant's content but its namespaces)."""

    def __init__(self, url: str) -> None:
        self._r = sync_client(url, timeout=5.0)  # a cluster client for a cluster URL

    def close(self) -> None:
        """Close the connection pool."""
        close(self._r)

    def live_grants(self, class_of: ClassOf) -> Counter[tuple[str, str]]:
        """(agent class, namespace) -> live grants: not expired, revoked or released. A grant
        whose scopes span namespaces counts once in each."""
        out: Counter[tuple[str, str]] = Counter()
        with translated():
            # Every member (one scored by its warning time may be due and still live); a grant
            # key lives until its expiry, and a life key until the grant ended or was announced.
            members = [m for index in keys.expiry_indexes() for m in cast(
                list[bytes], self._r.zrange(index, 0, -1))]
            for start in range(0, len(members), BATCH):
                parsed = [keys.parse_member(m.decode()) for m in members[start:start + BATCH]]
                pipe = self._r.pipeline(transaction=False)
                for agent, grant, _ns in parsed:
                    pipe.exists(keys.grant(agent, grant), keys.life(agent, grant))
                for (agent, _grant, namespaces), present in zip(parsed, pipe.execute(),
                                                                strict=True):
                    if present == 2:
                        for ns in namespaces or ("unknown",):
                            out[(class_of(agent) or "unknown", ns)] += 1
        return out

    def quarantined(self) -> int:
        """Agents under quarantine now (their quarantine key expires when it ends)."""
        with translated():
            return sum(1 for _ in self._r.scan_iter(match=keys.quarantine("*"), count=1000))
