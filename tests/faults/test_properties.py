"""Property-based invariants (criterion 14): the stateful model of
tests/support/faults/model/machine.py run by hypothesis, randomized (a fresh seed each run,
printed; a failure names it), against the real worker code, its identity gate and its lanes: on
a private redis-server with the worker's output captured, and on a private Kafka + Redis with
every message crossing Kafka.

Sizes: PERMBROKER_PROPS_EXAMPLES / PERMBROKER_PROPS_STEPS (the captured world) and
PERMBROKER_PROPS_KAFKA_EXAMPLES (the Kafka world) change them; PERMBROKER_PROPS_SEED replays one
run. The defaults keep ``make test-faults`` near a quarter of an hour on two cores.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from broker.policy import load_policy
from tests.support.faults import private
from tests.support.faults.bundles import props_bundle
from tests.support.faults.model import machine, spec, world
from tests.support.faults.model.gate import Identities
from tests.support.faults.model.kafka_world import KafkaWorld
from tests.support.faults.report import Figures

EXAMPLES = int(os.environ.get("PERMBROKER_PROPS_EXAMPLES", "200"))
STEPS = int(os.environ.get("PERMBROKER_PROPS_STEPS", "50"))
KAFKA_EXAMPLES = int(os.environ.get("PERMBROKER_PROPS_KAFKA_EXAMPLES", "25"))
KAFKA_STEPS = 30
SEED = int(os.environ["PERMBROKER_PROPS_SEED"]) if "PERMBROKER_PROPS_SEED" in os.environ else None
EXERCISED = ("requests granted", "revocations", "renewals allowed", "releases done",
             "expiries announced", "rule: redelivery", "replays refused by the gate",
             "rule: forged request", "rule: burst", "grants compared after rebuild")


def report(figures: Figures, counts: Counter[str], examples: int, seed: int,
           started: float) -> None:
    """The run's counts as figures: every example and step ran, every outcome was reached."""
    figures.check("seed (PERMBROKER_PROPS_SEED reproduces the run)", str(seed), "random", True)
    figures.check("rounds (more run while an outcome was not reached)", counts["rounds"],
                  "counted", True)
    figures.at_least("examples (interleavings) run", counts["examples"], examples)
    steps = sum(v for k, v in counts.items() if k.startswith("rule: "))
    figures.at_least("steps run (rule calls)", steps, examples)
    figures.at_least("invariant checks passed (after every step)", counts["invariant checks"],
                     steps)
    for name in sorted(counts):
        if name not in ("examples", "invariant checks", "rounds"):
            figures.check(name, counts[name], "counted", True)
    for needed in EXERCISED:
        figures.at_least(f"exercised: {needed}", counts[needed], 1)
    figures.check("run time (s)", round(time.monotonic() - started, 1), "reported", True)
    figures.verify()


@pytest.mark.criterion("14")
@pytest.mark.timeout(1800)  # a failure shrinks for up to five minutes more
def test_any_interleaving_keeps_the_grant_invariants(tmp_path: Path, figures: Figures) -> None:
    """Requests, risk, renewals, releases, expiries, redeliveries, replays, forgeries, bursts
    through the lanes, rebuilds: the invariants hold after every step."""
    policy = load_policy(props_bundle(tmp_path / "bundle"))
    ids = Identities(tmp_path / "ids", policy)
    started = time.monotonic()
    with world.redis_server() as url:
        seed = machine.run(lambda: world.World(url, policy, ids), examples=EXAMPLES, steps=STEPS,
                           seed=SEED, exercise=EXERCISED)
    report(figures, spec.COUNTS, EXAMPLES, seed, started)


@pytest.mark.criterion("14")
@pytest.mark.timeout(1200)
def test_the_model_with_every_message_through_kafka_keeps_the_invariants(
    tmp_path: Path, figures: Figures,
) -> None:
    """The same model with a real Kafka in the loop: inputs produced and consumed back (Kafka's
    offsets and append times), outputs produced and read back, the view rebuilt from the log."""
    policy = load_policy(props_bundle(tmp_path / "bundle"))
    ids = Identities(tmp_path / "ids", policy)
    started = time.monotonic()
    with private.private_stack() as kafka_settings:
        seed = machine.run(lambda: KafkaWorld(policy, ids, kafka_settings),
                           examples=KAFKA_EXAMPLES, steps=KAFKA_STEPS, seed=SEED,
                           exercise=EXERCISED)
    report(figures, spec.COUNTS, KAFKA_EXAMPLES, seed, started)
