"""Benchmark 5: one policy decision, ours (CEL, compiled once) against OPA and a predicate.

Imports broker.policy, schemas and the optional OPA peer. Before timing, the Rego translation
is checked against ``Policy.evaluate`` on several requests (granted, clamped, denied by the
ceiling, by the deny rule, by default), so the peer decides the same thing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from bench import peers
from bench.measures.micro import batches
from bench.stats import Arm
from broker.policy import Policy, RiskContext, load_policy
from schemas.events import EscalationRequested

FRAUD_AGENT = "fraud-detector-7"
ARMS = {
    "policy": ("Policy.evaluate (fraud policy, CEL)", "us"),
    "opa": ("OPA in-process: fraud policy in Rego", "us"),
    "predicate": ("trivial Python predicate (floor)", "us"),
}


def _request(scopes: tuple[str, ...], confidence: float = 0.95,
             resources: tuple[str, ...] = ("acct-1", "acct-2")) -> EscalationRequested:
    return EscalationRequested(
        request_id=f"req-{uuid.uuid4()}", agent_id=FRAUD_AGENT, scopes=scopes,
        resources=resources, duration_s=900, reason="bench", confidence=confidence,
        risk_score=0.93, requested_at=datetime.now(UTC))


CASES = (
    (("payments:accounts.freeze", "crm:customer.pii.read"), 0.95, 0.0),
    (("payments:accounts.freeze", "crm:customer.pii.read"), 0.95, 0.9),  # deny rule on crm
    (("payments:accounts.freeze",), 0.5, 0.0),  # condition false: default deny
    (("reports:ledger.export",), 0.95, 0.0),  # outside the ceiling
)


def opa_input(req: EscalationRequested, risk: RiskContext) -> dict[str, Any]:
    """What the Rego policy reads (the same facts Policy.evaluate is given)."""
    return {"request": req.model_dump(mode="json"),
            "risk": {"agent": risk.agent, "request": risk.request}}


def opa_data(policy: Policy) -> dict[str, Any]:
    """The bundle's classes and agent directory as OPA data."""
    return {
        "classes": {n: {"ceiling": list(c.ceiling)} for n, c in policy.classes.items()},
        "agents": {a.agent_id: {"agent_class": a.agent_class,
                                "confidence_threshold": a.confidence_threshold}
                   for a in policy.agents()},
    }


def equivalent(policy: Policy, engine: Any) -> str:
    """'' when the Rego translation decides every case like Policy.evaluate, else the case."""
    agent = policy.agent(FRAUD_AGENT)
    now = datetime.now(UTC)
    for scopes, confidence, risk_agent in CASES:
        req, risk = _request(scopes, confidence), RiskContext(agent=risk_agent, request=0.93)
        ours = policy.evaluate(req, agent, risk, now)
        theirs = engine.eval_document("permbroker.fraud.decision", opa_input(req, risk))
        same = (set(ours.granted) == set(theirs["granted"])
                and {d.scope: d.rule for d in ours.denied} == theirs["denied"]
                and ours.duration_s == theirs["duration_s"])
        if not same:
            return f"scopes {scopes} confidence {confidence} risk {risk_agent}: ours {ours}, " \
                   f"OPA {theirs}"
    return ""


def policy_rounds(rounds: int, say: Any) -> tuple[dict[str, Arm], str]:
    """Bench 5 rounds; returns the arms and the equivalence verdict of the Rego translation."""
    arms = {k: Arm(name, unit) for k, (name, unit) in ARMS.items()}
    policy = load_policy(peers.REGO_DIR.parents[1] / "policies" / "fraud")
    agent = policy.agent(FRAUD_AGENT)
    req = _request(("payments:accounts.freeze", "crm:customer.pii.read"))
    risk = RiskContext(agent=0.0, request=req.risk_score)
    now = datetime.now(UTC)
    engine, why = peers.opa_engine()
    verdict = why
    if engine is not None:
        peers.load_rego(engine, "fraud")
        engine.add_data(opa_data(policy))
        mismatch = equivalent(policy, engine)
        verdict = f"Rego translation decides like Policy.evaluate on {len(CASES)} cases" \
            if not mismatch else f"Rego translation DIFFERS: {mismatch}"
    else:
        arms["opa"].notes = why
    threshold = agent.confidence_threshold if agent else 1.0
    inp = opa_input(req, risk)
    try:
        for r in range(rounds):
            arms["policy"].add_round(batches(lambda: policy.evaluate(req, agent, risk, now), 200))
            if engine is not None:
                arms["opa"].add_round(batches(lambda: engine.eval_document(
                    "permbroker.fraud.decision", inp), 200))
            arms["predicate"].add_round(batches(
                lambda: req.confidence >= threshold and req.risk_score >= 0.8, 2000))
            say(f"policy round {r + 1}/{rounds}: evaluate p50 "
                f"{arms['policy'].round_stat(r, 50):.1f} us")
    finally:
        if engine is not None:
            engine.close()
    return arms, verdict
