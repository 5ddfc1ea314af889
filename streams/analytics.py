"""Behaviour analytics in the worker: decisions in, profiles in Redis, signed risk signals out.

Imports broker (core and adapters), schemas, streams.worker.

Every ``escalation.decided`` (one per request an agent sent, whatever the rate limit or the
policy answered) is folded into its agent's profile (``broker.behaviour``) with the decision's
own time; the policy's ``detectors`` section says what is anomalous. A finding becomes a
``risk.observed`` signal of kind ``behaviour_anomaly`` with the evidence, signed with the
broker's analytics key (an operator principal the identity gate trusts for any agent), and an
audit record of kind ``behaviour.anomaly``; the policy's revocation rules decide what it does.
``UsageDetector`` does the same for the checks enforcement points report (``checks.reported``,
handed over by streams.budgets): an agent whose checks stray far from its usual resources.

Order per decision: load the profile; skip it if it already holds this offset (a redelivery);
publish the findings' signals (deterministic ids); then save with a compare-and-set on the
offset. A crash before the save replays the decision and republishes the same signal ids (a
revocation by the same signal id is idempotent); after the save, nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from broker.adapters.kafka import codec
from broker.adapters.kafka.codec import Encoded
from broker.adapters.redis.stats.profiles import ProfileStore
from broker.behaviour.profiles import (
    ClassView,
    Finding,
    Observation,
    Profile,
    detect,
    ms,
    observe,
    silence,
)
from broker.behaviour.usage import judge
from broker.errors import WireError
from broker.grants.decide import derive_id
from broker.policy.detectors import Detectors
from schemas import topics
from schemas.events import (
    AgentProfile,
    AuditRecord,
    ChecksReported,
    EscalationDecided,
    RiskObserved,
)
from streams.worker import SOURCE, Gate, Incoming, WorkerContext

log = logging.getLogger("permbroker.analytics")
SIGNAL_KIND = "behaviour_anomaly"
SIGNAL_SOURCE = "permbroker-analytics"


def observation(decision: EscalationDecided, agent: AgentProfile) -> Observation:
    """What one decision tells the profile: requested scopes (granted and denied) and the
    resources of a grant (a denial names none)."""
    scopes = (*decision.granted_scopes, *(d.scope for d in decision.denied if d.scope != "*"))
    return Observation(decision.agent_id, agent.agent_class, agent.model.version,
                       decision.decision_id, decision.decided_at, decision.outcome == "granted",
                       tuple(dict.fromkeys(scopes)), decision.resources)


class Analytics:
    """Feeds decisions to the detectors and publishes what they find."""

    def __init__(self, ctx: WorkerContext, gate: Gate, store: ProfileStore,
                 sign: Callable[[Encoded], Encoded]) -> None:
        self.ctx = ctx
        self.gate = gate
        self.store = store
        self._sign = sign
        # (agent class, model version, kind) -> count: bounded labels for Prometheus.
        self.counts: dict[tuple[str, str, str], int] = {}

    def sign(self, message: Encoded) -> Encoded:
        """Sign a message with the broker's analytics key."""
        return self._sign(message)

    def _count(self, obs: Observation, kind: str) -> None:
        key = (obs.agent_class, obs.model_version, kind)
        self.counts[key] = self.counts.get(key, 0) + 1

    async def on_decision(self, msg: Incoming) -> None:
        """Fold one message of the decisions topic into its agent's profile."""
        cfg = self.ctx.policy.detectors
        if cfg is None:
            return
        await self.ctx.ready.wait()
        await self.gate.ready.wait()  # the registry is loaded
        try:
            event = self.ctx.read(msg)  # a decision the broker signed, or a refusal
        except WireError as exc:
            await self.ctx.dead_letter(msg, f"behaviour analytics: {exc}", "analytics")
            return
        if not isinstance(event, EscalationDecided):
            return  # renewal/release decisions and command answers are not requests
        agent = self.gate.profile(event.agent_id)
        if agent is None or not cfg.watches(agent.agent_class):
            return
        await self.ctx.retrying("behaviour", lambda: self._fold(event, agent, msg, cfg))

    async def _fold(self, decision: EscalationDecided, agent: AgentProfile, msg: Incoming,
                    cfg: Detectors) -> None:
        obs = observation(decision, agent)
        (before, (partition, offset)), klass = await asyncio.gather(
            self._load(decision.agent_id), self._class_view(obs, cfg, agent.tenant))
        if partition == msg.partition and offset >= msg.offset:
            self.ctx.count("behaviour_redelivered")
            return
        after = observe(before, obs, cfg)
        findings = detect(before, after, obs, cfg, klass)
        after = silence(after, findings, cfg, obs.at)
        for finding in findings:
            await self._signal(decision, obs, finding, after)
        at = ms(obs.at)
        if not await self.store.save(decision.agent_id, after, (msg.partition, msg.offset),
                                     at + cfg.retention_s * 1000):
            return
        bucket = at - at % (cfg.bucket_s * 1000)
        await self.store.count_group(obs.agent_class, obs.model_version, bucket, obs.granted,
                                     bucket + (cfg.history_s + cfg.bucket_s) * 1000,
                                     agent.tenant)
        if cfg.novel_pattern is not None:  # the agent's tenant's class: never another's
            await self.store.learn(obs.agent_class, obs.patterns, at,
                                   at + cfg.novel_pattern.remember_s * 1000, agent.tenant)
        self._count(obs, "requests")
        self._count(obs, "granted" if obs.granted else "denied")

    async def _load(self, agent_id: str) -> tuple[Profile | None, tuple[int, int]]:
        try:
            return await self.store.load(agent_id)
        except (ValueError, KeyError, TypeError) as exc:  # a profile we cannot read: start over
            log.error("behaviour profile of %s unreadable, starting a new one: %s", agent_id, exc)
            return None, (-1, -1)

    async def _class_view(self, obs: Observation, cfg: Detectors, tenant: str) -> ClassView:
        if cfg.novel_pattern is None:
            return ClassView(0, frozenset())
        return await self.store.class_view(obs.agent_class, obs.patterns, tenant)

    async def _signal(self, decision: EscalationDecided, obs: Observation, finding: Finding,
                      profile: Profile) -> None:
        """Publish the finding as a signed risk signal, then audit it."""
        signal = RiskObserved(
            signal_id=derive_id("behaviour", f"{decision.decision_id}:{finding.detector}",
                                decision.agent_id),
            subject_agent_id=decision.agent_id, kind=SIGNAL_KIND, severity=finding.severity,
            source=SIGNAL_SOURCE, detail=f"{finding.detector}: {finding.summary}",
            observed_at=obs.at, evidence=finding.evidence)
        message = self._sign(codec.encode(signal, source=SOURCE))
        await self.ctx.publisher.publish(topics.RISK.name, [message])
        await self.ctx.audit(anomaly_audit(signal, finding, decision, profile,
                                           self.ctx.policy.revision))
        self._count(obs, f"signal_{finding.detector}")
        log.warning("behaviour anomaly of %s (%s): %s; signal %s", decision.agent_id,
                    finding.detector, finding.summary, signal.signal_id)


def anomaly_audit(signal: RiskObserved, finding: Finding, decision: EscalationDecided,
                  profile: Profile, revision: str) -> AuditRecord:
    """The audit record of a finding: the signal, its evidence, and the profile it came from."""
    return AuditRecord(
        audit_id=derive_id("audit-behaviour", signal.signal_id, decision.agent_id),
        kind="behaviour.anomaly", agent_id=decision.agent_id, occurred_at=signal.observed_at,
        subject_id=signal.signal_id, outcome="signalled", reasons=(finding.summary,),
        rules=(f"detector:{finding.detector}",), policy_revision=revision,
        inputs={"signal": signal.model_dump(mode="json"), "evidence": finding.evidence,
                "decision_id": decision.decision_id,
                "profile": {"requests": profile.requests, "granted": profile.granted,
                            "denied": profile.denied, "first_ms": profile.first_ms,
                            "agent_class": profile.agent_class,
                            "model_version": profile.model_version}},
    )


class UsageDetector:
    """The unusual-resources detector: reported checks in, signed risk signals out."""

    def __init__(self, analytics: Analytics) -> None:
        self._a = analytics

    async def on_checks(self, report: ChecksReported) -> None:
        """Fold one check report into its agent's usual resources; signal a stray window."""
        a = self._a
        cfg = a.ctx.policy.detectors
        rule = cfg.unusual_resources if cfg is not None else None
        if cfg is None or rule is None:
            return
        await a.gate.ready.wait()  # the registry is loaded
        agent = a.gate.profile(report.agent_id)
        checks = [(c.resource, c.checked_at) for c in report.checks if c.resource]
        if agent is None or not cfg.watches(agent.agent_class) or not checks:
            return
        window = await a.store.observe_checks(report.agent_id, report.report_id, checks, rule)
        finding = judge(window, rule) if window is not None else None
        at = max(when for _, when in checks)
        if finding is None or not await a.store.cool_down(
                report.agent_id, at + timedelta(seconds=rule.cooldown_s)):
            return
        signal = RiskObserved(
            signal_id=derive_id("behaviour", f"{report.report_id}:{finding.detector}",
                                report.agent_id),
            subject_agent_id=report.agent_id, kind=SIGNAL_KIND, severity=finding.severity,
            source=SIGNAL_SOURCE, detail=f"{finding.detector}: {finding.summary}",
            observed_at=at, evidence=finding.evidence)
        await a.ctx.publisher.publish(topics.RISK.name,
                                      [a.sign(codec.encode(signal, source=SOURCE))])
        await a.ctx.audit(AuditRecord(
            audit_id=derive_id("audit-behaviour", signal.signal_id, report.agent_id),
            kind="behaviour.anomaly", agent_id=report.agent_id, occurred_at=at,
            subject_id=signal.signal_id, outcome="signalled", reasons=(finding.summary,),
            rules=(f"detector:{finding.detector}",), policy_revision=a.ctx.policy.revision,
            inputs={"signal": signal.model_dump(mode="json"), "evidence": finding.evidence,
                    "report_id": report.report_id, "service": report.service}))
        a.counts[(agent.agent_class, agent.model.version, f"signal_{finding.detector}")] = \
            a.counts.get((agent.agent_class, agent.model.version,
                          f"signal_{finding.detector}"), 0) + 1
        log.warning("behaviour anomaly of %s (%s): %s; signal %s", report.agent_id,
                    finding.detector, finding.summary, signal.signal_id)


class BehaviourCollector(Collector):
    """``permbroker_behaviour_events_total{agent_class, model_version, kind}``: requests,
    granted, denied and signals per detector. Labels are bounded by the policy's classes and
    the model versions in service (per-agent figures: ``permbroker agents stats``)."""

    def __init__(self, analytics: Analytics) -> None:
        self._a = analytics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("permbroker_behaviour_events",
                                     "Decided requests and behaviour signals, by class",
                                     labels=["agent_class", "model_version", "kind"])
        for (cls, version, kind), value in sorted(self._a.counts.items()):
            family.add_metric([cls, version, kind], value)
        yield family

