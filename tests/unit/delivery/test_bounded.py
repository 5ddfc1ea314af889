"""Bounded memory of long-running readers: the decision watcher and the grant view's index.

100,000 decisions for requests nobody here waits for leave the watcher holding at most its
bound, and the answer a caller does wait for is still there; 100,000 ended grants leave the
index remembering at most its bound. The bound is a setting (PERMBROKER_DECISIONS_KEPT,
PERMBROKER_VIEW_MAX_ENTRIES).
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime

from broker.adapters.kafka.edge import Record
from broker.config import Settings
from broker.delivery.bounded import Bounded
from broker.sdk.agent.client import Answers
from broker.sdk.resource.index import GrantIndex
from schemas import topics
from schemas.events import EscalationDecided, GrantReleased, WireModel

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FOREIGN = 100_000


def _record(event: WireModel, offset: int) -> Record:
    return Record(topics.DECISIONS.name, offset % 6, offset, 0, event, None, None,
                  b"someone-else", authentic=True)


def _decision(n: int) -> EscalationDecided:
    return EscalationDecided(decision_id=f"d-{n}", request_id=f"req-{n}", agent_id="someone-else",
                             outcome="denied", decided_at=NOW, policy_revision="p")


def test_a_watcher_holds_at_most_its_bound_after_100000_foreign_decisions() -> None:
    """The bound from settings holds: 100,000 foreign decisions, at most the bound held, the
    oldest dropped, and a decision arriving after them is handed to its waiter."""
    bound = Settings(decisions_kept=1_000).decisions_kept
    answers = Answers(max_entries=bound)
    template = _decision(0)
    tracemalloc.start()
    for n in range(FOREIGN):
        answers.on_record(_record(template.model_copy(update={"request_id": f"req-{n}"}), n))
    held_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert answers.held == bound
    answers.on_record(_record(_decision(FOREIGN), FOREIGN))
    assert answers.held == bound
    assert answers.wait(f"req-{FOREIGN}", timeout=0.1).request_id == f"req-{FOREIGN}"
    assert held_bytes < 5 * 1024 * 1024, held_bytes  # the bound, not the 100,000, decides


def test_a_grant_index_remembers_at_most_its_bound_of_100000_ended_grants() -> None:
    """Ended grant ids are remembered up to the bound; the newest ones still never come back."""
    bound = Settings(view_max_entries=2_000).view_max_entries
    index = GrantIndex(max_entries=bound)
    released = GrantReleased(grant_id="g-0", agent_id="a-1", released_at=NOW)
    for n in range(FOREIGN):
        index.apply(Record(topics.GRANTS.name, 0, n, 0,
                           released.model_copy(update={"grant_id": f"g-{n}"}), None, None,
                           b"a-1", authentic=True))
    assert len(index._ended) == bound
    assert index.state("a-1", f"g-{FOREIGN - 1}") == "ended"


def test_a_bounded_map_counts_what_it_dropped() -> None:
    """Putting past the bound drops the oldest first and counts each drop."""
    held: Bounded[str, int] = Bounded(3)
    for n in range(5):
        held.put(f"k{n}", n)
    assert held.keys() == ["k2", "k3", "k4"] and held.evicted == 2
    held.put("k2", 9)  # put again: the newest now
    held.put("k5", 5)
    assert held.keys() == ["k4", "k2", "k5"] and held.pop("k2") == 9
