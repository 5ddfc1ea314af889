"""The fraud scenario's cast, its timeline and its steps, each checked. L3: imports sdk, schemas.

``broker.demo.scenario`` plays these in order on a stack of its own; every step prints timeline
lines with absolute times and records whether each expectation held.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from rich.console import Console
from rich.markup import escape

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.acks import read_since
from broker.adapters.kafka.bus import Record
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.view import GrantView, Verdict
from schemas import topics
from schemas.events import (
    AgentRevoked,
    EscalationDecided,
    EscalationRequested,
    GrantExpired,
    GrantIssued,
    GrantRevoked,
    RevocationAcknowledged,
    RiskObserved,
)

FRAUD_AGENT = "fraud-detector-7"
REPORT_AGENT = "report-writer-2"
ACCOUNTS = ("acct-4411-0923", "acct-4411-7710")
OTHER_ACCOUNT = "acct-9000-0001"
FREEZE, PII = "payments:accounts.freeze", "crm:customer.pii.read"
PAYMENTS_SERVICE = "payments-service"  # the enforcement point of the demo's payments side

console = Console(highlight=False, width=int(os.environ.get("COLUMNS", "120")))


@dataclass
class Scenario:
    """Timeline, checks and the events the resource side saw (with when it applied them)."""

    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    seen: list[tuple[Record, float]] = field(default_factory=list)

    def say(self, actor: str, text: str) -> None:
        """One timeline line with an absolute UTC timestamp."""
        stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
        console.print(f"[dim]{stamp}Z[/] [bold cyan]{actor:<18}[/] {escape(text)}")

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """Record (and show) whether an expectation held."""
        self.checks.append((what, ok, detail))
        mark = "[green]✔[/]" if ok else "[bold red]✘[/]"
        console.print(
            f"{'':>13} {mark} {escape(what)}" + (f" [dim]({escape(detail)})[/]" if detail else "")
        )
        return ok

    def on_event(self, record: Record, applied_at: float) -> None:
        """GrantView callback: remember every lifecycle event and when it was applied."""
        self.seen.append((record, applied_at))

    def wait_event(
        self, pred: Callable[[Record], bool], timeout: float
    ) -> tuple[Record, float] | None:
        """The first seen event matching ``pred``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rec, at in list(self.seen):
                if pred(rec):
                    return rec, at
            time.sleep(0.01)
        return None


def fraud_request_like(agent: str) -> EscalationRequested:
    """A request in ``agent``'s name (the impostor step forges its signature)."""
    return EscalationRequested(
        request_id=f"req-impostor-{time.time_ns()}", agent_id=agent, scopes=(FREEZE,),
        resources=(OTHER_ACCOUNT,), duration_s=900, reason="not really me", confidence=0.99,
        risk_score=0.99, requested_at=datetime.now(UTC))


def _left(when: datetime | None) -> str:
    if when is None:
        return "-"
    return f"{when:%H:%M:%S}Z ({(when - datetime.now(UTC)).total_seconds():.1f}s left)"


def _verdict(v: Verdict) -> str:
    return f"{'ALLOW' if v.allowed else 'DENY'} ({v.reason})"


def _denial(d: EscalationDecided) -> str:
    return f"[{d.denied[0].rule}] {d.denied[0].reason}" if d.denied else ""


def _wait(pred: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``pred()`` held, or None if it never did within ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.001)
    return None


def wait_ack(
    kafka: KafkaAccess, cause_id: str, since: datetime, timeout: float
) -> RevocationAcknowledged | None:
    """The payments service's acknowledgement of one revocation, read back from Kafka."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for rec in read_since(kafka, topics.REVOCATION_ACKS.name, since):
            ack = rec.event
            if isinstance(ack, RevocationAcknowledged) and ack.cause_event_id == cause_id \
                    and ack.enforcement_point == PAYMENTS_SERVICE:
                return ack
        time.sleep(0.05)
    return None


def escalate(s: Scenario, view: GrantView, fraud: AgentClient) -> EscalationDecided:
    """Steps 1-2: the fraud agent spots a pattern and escalates; granted, narrowed, clamped."""
    s.say("resource:payments", "grant view caught up with the log; baseline only")
    s.check(
        "before escalation, freeze is denied",
        not view.allows(FRAUD_AGENT, FREEZE, ACCOUNTS[0]).allowed,
    )
    fraud.report_risk(
        kind="fraud_pattern",
        severity=0.93,
        resource=ACCOUNTS[0],
        detail="card-testing burst across two linked accounts",
    )
    s.say(
        FRAUD_AGENT,
        f"spots a fraud pattern on {', '.join(ACCOUNTS)} (risk 0.93); asks for "
        f"{FREEZE} + {PII} for 15m, confidence 0.95",
    )
    t0 = time.monotonic()
    d = fraud.request_escalation(
        [FREEZE, PII],
        resources=ACCOUNTS,
        duration_s=900,
        reason="suspected card-testing ring",
        confidence=0.95,
        risk_score=0.93,
        case_id="case-2026-1128-17",
    )
    s.say(
        "broker",
        f"{d.outcome.upper()} in {(time.monotonic() - t0) * 1000:.0f} ms: "
        f"{', '.join(d.granted_scopes)} on {', '.join(d.resources)}; "
        f"expires {_left(d.expires_at)}",
    )
    s.say("broker", f"clamped by {d.clamped_by}; policy {d.policy_revision}")
    s.check(
        "escalation granted with both scopes",
        d.outcome == "granted" and set(d.granted_scopes) == {FREEZE, PII},
    )
    s.check("narrowed to the two flagged accounts", set(d.resources) == set(ACCOUNTS))
    s.check(
        "clamped to the rule's maximum, and the output names the rule",
        d.duration_s == 20
        and bool(d.clamped_by)
        and "fraud-freeze-on-pattern" in (d.clamped_by or ""),
        f"{d.duration_s}s",
    )
    return d


def enforce(s: Scenario, payments: GrantView, d: EscalationDecided) -> None:
    """Step 3: the payments service enforces the grant, on the flagged accounts only."""
    seen = _wait(lambda: payments.allows(FRAUD_AGENT, FREEZE, ACCOUNTS[0]).allowed, 10)
    s.say(
        "resource:payments",
        f"grant reached the payments view ({payments.topic}) in {(seen or 0) * 1000:.1f} ms "
        "after the decision",
    )
    v_ok = payments.allows(FRAUD_AGENT, FREEZE, ACCOUNTS[0], at_least=d.consistency_token)
    v_other = payments.allows(FRAUD_AGENT, FREEZE, OTHER_ACCOUNT)
    held = [scope for g in payments.active(FRAUD_AGENT) for scope in g.scopes]
    s.check(
        "the payments topic carries the payments scope only (crm:* routed elsewhere)",
        held == [FREEZE], ", ".join(held),
    )
    s.say(
        "resource:payments",
        f"freeze {ACCOUNTS[0]}: {_verdict(v_ok)}",
    )
    s.say(
        "resource:payments",
        f"freeze {OTHER_ACCOUNT}: {_verdict(v_other)}",
    )
    s.check("freeze allowed on a flagged account", v_ok.allowed)
    s.check("freeze denied on a third account (outside the grant)", not v_other.allowed)


def outside_ceiling(s: Scenario, fraud: AgentClient) -> None:
    """Step 4: a scope outside the agent's ceiling is denied, naming the ceiling."""
    d4 = fraud.request_escalation(
        ["payments:transfers.create"],
        resources=[ACCOUNTS[0]],
        duration_s=300,
        reason="move funds to a safe account",
        confidence=0.99,
        risk_score=0.93,
    )
    rule4 = d4.denied[0].rule if d4.denied else ""
    s.say(
        "broker",
        f"{FRAUD_AGENT} asks for payments:transfers.create: {d4.outcome.upper()} "
        f"[{rule4}] {d4.denied[0].reason if d4.denied else ''}",
    )
    s.check(
        "scope outside the ceiling denied, naming the ceiling",
        d4.outcome == "denied" and rule4.startswith("ceiling:"),
        rule4,
    )


def short_grant(s: Scenario, reporter: AgentClient) -> EscalationDecided:
    """Step 6, started early so it lapses while the rest plays: an unrelated short grant."""
    d6 = reporter.request_escalation(
        ["reports:ledger.export"],
        duration_s=6,
        reason="month-end ledger export",
        confidence=0.97,
    )
    s.say(
        "broker",
        f"{REPORT_AGENT}: {d6.outcome.upper()} reports:ledger.export, "
        f"expires {_left(d6.expires_at)}",
    )
    s.check("unrelated grant to another agent issued", d6.outcome == "granted")
    return d6


def anomaly(s: Scenario, fraud: AgentClient, payments: GrantView) -> RiskObserved:
    """Step 5: an anomaly in the fraud agent's own behaviour revokes everything it holds."""
    sig = fraud.report_risk(
        kind="behaviour_anomaly",
        severity=0.95,
        subject_agent_id=FRAUD_AGENT,
        detail="query volume 40x its baseline",
    )
    s.say(
        "monitor",
        f"behaviour anomaly about {FRAUD_AGENT} (severity 0.95), signal {sig.signal_id}",
    )
    gone = _wait(lambda: not payments.allows(FRAUD_AGENT, FREEZE, ACCOUNTS[0]).allowed, 10)
    rev = s.wait_event(
        lambda r: isinstance(r.event, AgentRevoked) and r.event.agent_id == FRAUD_AGENT, 5
    )
    after = payments.allows(FRAUD_AGENT, FREEZE, ACCOUNTS[0])
    if rev is not None:
        ev = rev[0].event
        assert isinstance(ev, AgentRevoked)
        lag = (rev[1] - ev.revoked_at.timestamp()) * 1000
        s.say(
            "broker",
            f"revoked {len(ev.grant_ids)} grant(s) [rule {ev.rule}]; quarantined until "
            f"{_left(ev.quarantined_until)}",
        )
        s.say(
            "resource:payments",
            f"revocation applied {lag:.1f} ms after Kafka appended the "
            f"signal; freeze {ACCOUNTS[0]}: {_verdict(after)}",
        )
    s.check(
        "revocation reached the resource side and the next check is denied",
        gone is not None and rev is not None and not after.allowed,
    )
    return sig


def acknowledged(s: Scenario, kafka: KafkaAccess, sig: RiskObserved, since: datetime,
                 grant_id: str) -> None:
    """Step 5, continued: the payments service acknowledged it; the grant.revoked was seen."""
    ack = wait_ack(kafka, sig.signal_id, since, 10)
    if ack is not None:
        ms = (ack.applied_at - ack.revoked_at).total_seconds() * 1000
        s.say(
            PAYMENTS_SERVICE,
            f"acknowledged the revocation on {topics.REVOCATION_ACKS.name}: applied at "
            f"{ack.applied_at:%H:%M:%S.%f}Z, propagation {ms:.1f} ms "
            f"({ack.topic}@{ack.partition}:{ack.offset})",
        )
    s.check(
        "the payments service acknowledged the revocation (permbroker revocations status)",
        ack is not None,
    )
    revoked_ids = {r.event.grant_id for r, _ in s.seen if isinstance(r.event, GrantRevoked)}
    s.check("both scopes' grant revoked (grant.revoked event seen)", grant_id in revoked_ids)


def quarantined(s: Scenario, fraud: AgentClient) -> None:
    """Step 5, last: a new escalation during the quarantine is denied."""
    d5 = fraud.request_escalation(
        [FREEZE],
        resources=[ACCOUNTS[0]],
        duration_s=600,
        reason="retry after revocation",
        confidence=0.99,
        risk_score=0.95,
    )
    s.say(
        "broker",
        f"{FRAUD_AGENT} asks again during quarantine: {d5.outcome.upper()} {_denial(d5)}",
    )
    s.check("new escalation during quarantine denied", d5.outcome == "denied")


def lapsed(s: Scenario, view: GrantView, d6: EscalationDecided) -> None:
    """Step 6: the reporter's grant lapses on its own; two grants in the whole run."""
    exp = s.wait_event(
        lambda r: isinstance(r.event, GrantExpired) and r.event.grant_id == d6.grant_id, 20
    )
    if exp is not None:
        ev6 = exp[0].event
        assert isinstance(ev6, GrantExpired)
        s.say(
            "resource:reports",
            f"grant.expired for {ev6.grant_id} (expires_at "
            f"{ev6.expires_at:%H:%M:%S.%f}Z, announced "
            f"{(exp[1] - ev6.expires_at.timestamp()) * 1000:.0f} ms later)",
        )
    s.check("unrelated grant lapsed on its own (grant.expired seen)", exp is not None)
    s.check(
        "its access ended at expires_at",
        not view.allows(REPORT_AGENT, "reports:ledger.export").allowed,
    )
    issued = [r.event for r, _ in s.seen if isinstance(r.event, GrantIssued)]
    s.check(
        "exactly two grants were issued in the whole run", len(issued) == 2, str(len(issued))
    )
