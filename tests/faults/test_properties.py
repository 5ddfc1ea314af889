"""Property-based invariants (criterion 14): the stateful model of tests/support/faults/model.py
run by hypothesis against the real worker code on a private redis-server, with the counts in the
report."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from broker.policy import load_policy
from tests.support.faults import model, world
from tests.support.faults.bundles import props_bundle
from tests.support.faults.report import Figures

# CI-sized; PERMBROKER_PROPS_EXAMPLES raises it for a longer hunt.
EXAMPLES = int(os.environ.get("PERMBROKER_PROPS_EXAMPLES", "40"))
STEPS = 30


@pytest.mark.criterion("14")
def test_any_interleaving_keeps_the_grant_invariants(tmp_path: Path, figures: Figures) -> None:
    """Requests, risk, renewals, releases, expiries, redeliveries, rebuilds: invariants hold."""
    model.BrokerModel.policy = load_policy(props_bundle(tmp_path / "bundle"))
    model.COUNTS.clear()
    started = time.monotonic()
    with world.redis_server() as url:
        model.BrokerModel.url = url
        run_state_machine_as_test(model.BrokerModel, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            derandomize=True, database=None, print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ))
    counts = model.COUNTS
    figures.at_least("examples (interleavings) run", counts["examples"], EXAMPLES)
    steps = sum(v for k, v in counts.items() if k.startswith("rule: "))
    figures.at_least("steps run (rule calls)", steps, EXAMPLES)
    figures.at_least("invariant checks passed (after every step)", counts["invariant checks"],
                     steps)
    for name in sorted(counts):
        if name not in ("examples", "invariant checks"):
            figures.check(name, counts[name], "counted", True)
    for needed in ("requests granted", "revocations", "renewals allowed", "releases done",
                   "expiries announced", "rule: redelivery", "grants compared after rebuild"):
        figures.at_least(f"exercised: {needed}", counts[needed], 1)
    figures.check("run time (s)", round(time.monotonic() - started, 1), "reported", True)
    figures.verify()
