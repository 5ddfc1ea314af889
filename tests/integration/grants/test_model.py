"""The fault suite's property model in a short profile, so ``make test`` runs it too.

Randomized like the long run (tests/faults/test_properties.py): a fresh seed each time, printed
and named by a failure; the real worker code behind its identity gate, bursts through its lanes,
on a private redis-server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.policy import load_policy
from tests.support.faults.bundles import props_bundle
from tests.support.faults.model import machine, spec, world
from tests.support.faults.model.gate import Identities

EXAMPLES, STEPS = 12, 20


@pytest.mark.timeout(900)  # a failure shrinks for up to five minutes
def test_a_short_randomized_run_of_the_property_model_keeps_the_grant_invariants(
    tmp_path: Path,
) -> None:
    """Twelve random interleavings of twenty steps: the model's invariants hold after each."""
    policy = load_policy(props_bundle(tmp_path / "bundle"))
    ids = Identities(tmp_path / "ids", policy)
    with world.redis_server() as url:
        machine.run(lambda: world.World(url, policy, ids), examples=EXAMPLES, steps=STEPS)
    assert spec.COUNTS["examples"] >= EXAMPLES
    assert spec.COUNTS["invariant checks"] >= EXAMPLES
