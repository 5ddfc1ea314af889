"""The worker's decision figures: the rule a decision counts under, one observation per
decision, dead letters by code; and the sealer's lag arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.adapters.kafka.lag import behind
from schemas.events import EscalationDecided, ScopeDenial
from streams.telemetry.figures import Figures, deciding_rule

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def decision(**fields: object) -> EscalationDecided:
    """A decision with the given fields (a granted one by default)."""
    base: dict[str, object] = {"decision_id": "d-1", "request_id": "r-1",
                               "agent_id": "fraud-detector-7", "outcome": "granted",
                               "policy_revision": "rev", "decided_at": NOW}
    return EscalationDecided.model_validate({**base, **fields})


def test_the_deciding_rule_is_the_denial_then_the_clamp_then_the_match() -> None:
    """First denial's rule, else the clamp, else the first matched rule, else "none"."""
    denial = ScopeDenial(scope="crm:x", rule="no-pii-for-risky-agent", reason="risky")
    assert deciding_rule(decision(outcome="denied", denied=(denial,),
                                  clamped_by="c")) == "no-pii-for-risky-agent"
    assert deciding_rule(decision(clamped_by="fraud-freeze", matched_rules=("m",))) == \
        "fraud-freeze"
    assert deciding_rule(decision(matched_rules=("m1", "m2"))) == "m1"
    assert deciding_rule(decision()) == "none"


def value(figures: Figures, name: str, **labels: str) -> float:
    """One sample of the figures' registry (0 when absent)."""
    got = figures.registry.get_sample_value(name, labels or None)
    return got if got is not None else 0.0


def test_each_decision_is_one_observation_of_each_histogram() -> None:
    """Three decisions: three observations each, counted by outcome and rule; latencies are
    the differences of the times given (never negative)."""
    f = Figures()
    f.decided(decision(matched_rules=("r",)), 100.0, 100.2, 100.5)
    f.decided(decision(matched_rules=("r",)), 100.0, 100.1, 100.1)
    f.decided(decision(outcome="denied"), 100.0, 99.0, 98.0)  # clocks apart: clamped to 0
    assert value(f, "permbroker_decision_commit_seconds_count") == 3
    assert value(f, "permbroker_decision_publish_seconds_count") == 3
    assert abs(value(f, "permbroker_decision_commit_seconds_sum") - 0.3) < 1e-9
    assert abs(value(f, "permbroker_decision_publish_seconds_sum") - 0.3) < 1e-9
    assert value(f, "permbroker_decisions_total", outcome="granted", rule="r") == 2
    assert value(f, "permbroker_decisions_total", outcome="denied", rule="none") == 1


def test_dead_letters_are_counted_by_their_code() -> None:
    """The code, not the free-text reason, is the label."""
    f = Figures()
    for code in ("not-json", "not-json", "bad-signature"):
        f.dead_lettered(code)
    assert value(f, "permbroker_dead_letters_total", reason="not-json") == 2
    assert value(f, "permbroker_dead_letters_total", reason="bad-signature") == 1


def test_sealer_lag_is_the_distance_to_the_log_end() -> None:
    """Per sealed partition: high watermark minus the next offset to seal, never negative."""
    assert behind({0: 10, 1: 5, 2: 7}, {0: 4, 1: 5, 2: 9}) == {0: 6, 1: 0, 2: 0}
