"""The behaviour step of the demo: probing is detected and revoked by policy. L3.

Imports broker (adapters, sdk, config) and schemas. Called by ``broker.demo`` after the fraud
scenario: ``report-writer-2`` holds a ledger-export grant, then keeps asking for a payments
scope outside its ceiling. The worker's behaviour detectors see a burst of denials (the fraud
bundle's ``detectors.denial_burst``: 5 denials in a minute, at least half of what it asked),
publish a signed ``behaviour_anomaly`` signal with the evidence, and the bundle's rule
``revoke-on-denial-burst`` revokes the export grant and quarantines the agent. Nobody sends a
risk signal by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import TopicPartition

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record, consumer, end_offsets, to_record
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.events import AgentRevoked, RiskObserved

REPORT_AGENT = "report-writer-2"
EXPORT, FREEZE = "reports:ledger.export", "payments:accounts.freeze"
PROBES = 5


class Timeline(Protocol):
    """What the demo's Scenario offers."""

    def say(self, actor: str, text: str) -> None:
        """One timeline line."""

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """One checked expectation."""

    def wait_event(self, pred: Callable[[Record], bool],
                   timeout: float) -> tuple[Record, float] | None:
        """The first lifecycle event the resource side saw matching ``pred``."""


def find_signal(kafka: KafkaAccess, signal_id: str, timeout: float) -> RiskObserved | None:
    """The risk signal with ``signal_id`` on the risk topic (read from the start)."""
    c = consumer(kafka)
    try:
        ends = end_offsets(c, topics.RISK.name)
        c.assign([TopicPartition(topics.RISK.name, p, 0) for p in ends])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.1)
            if msg is None or msg.error():
                continue
            event = to_record(msg).event
            if isinstance(event, RiskObserved) and event.signal_id == signal_id:
                return event
        return None
    finally:
        c.close()


def detected_revocation(s: Timeline, settings: Settings, view: GrantView) -> None:
    """Step 8: a burst of denied requests revokes the agent's grants, by policy."""
    keys = AgentKeyStore.from_settings(settings)
    with AgentClient(REPORT_AGENT, role_access(settings, topics.AGENT), keys=keys) as agent:
        d = agent.request_escalation([EXPORT], duration_s=8, reason="month-end report run",
                                     confidence=0.9)
        s.say("broker", f"{REPORT_AGENT}: {EXPORT} {d.outcome.upper()} (grant {d.grant_id})")
        s.check("the report writer holds an export grant", d.outcome == "granted")
        denied = 0
        for n in range(PROBES):
            probe = agent.request_escalation([FREEZE], resources=[f"acct-5000-000{n}"],
                                             duration_s=60, reason="just checking",
                                             confidence=0.9)
            denied += probe.outcome == "denied"
        s.say(REPORT_AGENT, f"asks {PROBES} times for {FREEZE} (outside its ceiling): "
              f"{denied} denied")
    found = s.wait_event(lambda r: isinstance(r.event, AgentRevoked)
                         and r.event.agent_id == REPORT_AGENT, 20)
    rev = found[0].event if found is not None else None
    assert rev is None or isinstance(rev, AgentRevoked)
    operator = role_access(settings, topics.OPERATOR)
    signal = find_signal(operator, rev.cause_event_id, 10) if rev is not None else None
    if rev is not None:
        s.say("broker", f"revoked {len(rev.grant_ids)} grant(s) of {REPORT_AGENT} by rule "
              f"{rev.rule}; quarantined until {rev.quarantined_until:%H:%M:%S}Z"
              if rev.quarantined_until else f"revoked by rule {rev.rule}")
    if signal is not None:
        s.say("analytics", f"signal {signal.signal_id} from {signal.source}: {signal.detail}")
        s.say("analytics", "evidence " + ", ".join(f"{k}={v}" for k, v in signal.evidence.items()))
    s.check("a burst of denials was detected and revoked the agent's grant by policy "
            "(rule revoke-on-denial-burst, signal with evidence from permbroker-analytics)",
            rev is not None and rev.rule == "revoke-on-denial-burst"
            and d.grant_id in rev.grant_ids and signal is not None
            and signal.evidence.get("detector") == "denial_burst",
            f"rule {rev.rule if rev else None}")
    s.check("after the detected revocation the export is denied",
            not view.allows(REPORT_AGENT, EXPORT).allowed)
