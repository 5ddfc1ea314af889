"""The worker's composition root: Settings read once, stores, keys and handlers built and injected.

Imports broker (config, core, adapters) and streams; faust only through streams.app.

``main`` (``python -m streams``, run by ``permbroker worker``) reads the settings and the policy
once, builds the faust app and its publisher (streams/app.py), then every handler here, each
given what it uses through its constructor, and hands them to ``streams.app.wire``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable

import faust
from prometheus_client.registry import Collector

from broker.adapters import logs, tracing
from broker.adapters.audit.keys import load_keys
from broker.adapters.audit.sealer import Sealer
from broker.adapters.crypto.analytics_key import ensure_analytics_key
from broker.adapters.crypto.keystore import OperatorDirectory, load_operator_scopes
from broker.adapters.crypto.signing import sign_message
from broker.adapters.crypto.tokens import BrokerKeyring, RecordSigner
from broker.adapters.crypto.trust import RecordTrust, ServiceDirectory
from broker.adapters.kafka import rebuild
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.admin import ensure_topics, grant_topic_names
from broker.adapters.kafka.edge import RefusalCollector
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.lag import LagProbe
from broker.adapters.ports import Publisher
from broker.adapters.redis.approvals import ApprovalStore
from broker.adapters.redis.budgets import BudgetRevoker
from broker.adapters.redis.identity import IdentityStore
from broker.adapters.redis.lifecycle import LifecycleStore
from broker.adapters.redis.quotas import QuotaStore
from broker.adapters.redis.stats.census import Census, ClassOf
from broker.adapters.redis.stats.profiles import ProfileStore
from broker.adapters.redis.store import RedisGrantStore
from broker.audit.records import rebuild_audit
from broker.audit.redact import Redactor
from broker.config import Settings
from broker.delivery.routing import GrantRouting, routing_for
from broker.errors import BusError, ConfigError, KeyFileError, PolicyError
from broker.identity.tenants import DEFAULT_TENANT, SEPARATOR, Tenancy, load_tenancy
from broker.policy import Policy, load_policy
from schemas import topics
from streams import app as faust_app
from streams.analytics import Analytics, BehaviourCollector, UsageDetector
from streams.approvals import Approvals
from streams.budgets import Budgets
from streams.delegation import Delegations
from streams.escalations import Escalations
from streams.identity.commands import Commands
from streams.identity.gate import IdentityGate
from streams.lifecycle import Lifecycle
from streams.metrics import serve_metrics
from streams.risk import Risk
from streams.telemetry.probes import ProbeCollector, SealerWatch
from streams.worker import WorkerContext

log = logging.getLogger("permbroker.worker")
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def main() -> int:
    """Load settings and policy, then run the faust worker until it is stopped."""
    settings = Settings()
    loglevel = sys.argv[1] if len(sys.argv) > 1 else "info"
    try:
        policy = load_policy(settings.policy_path)
        tenancy = load_tenancy(policy, settings.tenant_policies_dir)
    except (PolicyError, ValueError) as exc:
        print(f"permbroker worker: invalid policy: {exc}", file=sys.stderr)
        return 2
    try:
        kafka = KafkaAccess.from_settings(settings)
        app = faust_app.make_app(settings, kafka)
        worker = build(settings, kafka, policy, faust_app.FaustPublisher(app), tenancy,
                       inputs=lambda: faust_app.consumed(app))
    except (ConfigError, KeyFileError) as exc:
        print(f"permbroker worker: {exc}", file=sys.stderr)
        return 2
    faust_app.wire(app, worker, settings)
    level = loglevel.upper() if loglevel != "warn" else "WARNING"
    logging.getLogger("permbroker").setLevel(level)
    logs.hide(kafka.password)
    faust.Worker(app, loglevel=loglevel, quiet=True,
                 logging_config=logs.logging_config(level)).execute_from_commandline()
    return 0


def _gate(settings: Settings, ctx: WorkerContext, policy: Policy) -> IdentityGate:
    """The identity gate every handler admits signed records through."""
    gate = IdentityGate(
        OperatorDirectory(settings.key_path("operators")),
        ServiceDirectory(settings.key_path("services")),
        IdentityStore.from_url(settings.redis_url), settings, ctx.audit, ctx.count,
        classes={name: (c.baseline, c.ceiling) for name, c in policy.classes.items()},
        lifecycle=policy.lifecycle,
    )
    gate.tenant_classes = {t: ctx.tenancy.classes(t) for t in ctx.tenancy.others}
    gate.operator_tenants = load_operator_scopes(settings.operator_tenants_file)
    return gate


def build(settings: Settings, kafka: KafkaAccess, policy: Policy, publisher: Publisher,
          tenancy: Tenancy | None = None,
          inputs: Callable[[], Iterable[str]] = tuple) -> faust_app.Worker:
    """Every handler of a worker, built once; ConfigError when a key it needs is missing.
    ``inputs``: the topics the worker consumes (their lag is served as a metric)."""
    margin_s = settings.record_margin_s
    tracing.configure(settings.tracing, settings.tracing_file, "permbroker-worker")
    store = RedisGrantStore.from_url(
        settings.redis_url, margin_s=margin_s, warn_before_s=settings.expiry_warning_s
    )
    audit_keys = load_keys(settings)  # ConfigError (the worker refuses to start) when missing
    tenancy = tenancy or Tenancy(policy)
    routing = _routing(settings, tenancy)
    # The broker signs every record it writes; it reads back only what its chain of trust
    # (the anchor, then the published key sets) vouches for. Both are required (fail closed).
    keyring = BrokerKeyring(settings.key_path("broker"))
    trust = RecordTrust.from_files(settings.key_path("trust-anchor"),
                                   settings.key_path("services"),
                                   leeway_s=settings.signature_max_skew_s)

    async def rebuild_view() -> int:
        return await _rebuild_view(store, kafka, ctx, trust)

    ctx = WorkerContext(
        policy, store, publisher, margin_s=margin_s, rebuild=rebuild_view, fencing=True,
        redactor=_redactor(settings, audit_keys.hmac_key),
        audit_timeout_s=settings.audit_timeout_s, routing=routing,
        signer=RecordSigner(keyring), trust=trust,
    )
    ctx.tenancy = tenancy
    gate = _gate(settings, ctx, policy)
    ctx.tenant_of = _tenant_of(gate, tenancy)
    risk = Risk(ctx, gate)
    lifecycle = Lifecycle(ctx, gate, life := LifecycleStore(store, margin_s=margin_s))
    approvals = Approvals(ctx, gate, ApprovalStore(store.client, margin_s=margin_s))
    delegations = Delegations(ctx, gate, life, store, held=approvals.store)
    approvals.finish_delegation = delegations.finish_held
    principal, key = ensure_analytics_key(settings)
    analytics = Analytics(ctx, gate, ProfileStore.from_url(settings.redis_url),
                          lambda m: sign_message(m, key, principal))
    sealer = SealerWatch(functools.partial(Sealer, settings, kafka, audit_keys, ctx.sign)) \
        if settings.audit_sealer else None
    _serve_metrics(settings, kafka, ctx, gate, inputs, sealer,
                   BehaviourCollector(analytics), RefusalCollector(trust.refusals))
    budgets = Budgets(ctx, BudgetRevoker(store.client, margin_s=margin_s))
    budgets.observe_checks = UsageDetector(analytics).on_checks
    return faust_app.Worker(
        ctx=ctx,
        escalations=Escalations(ctx, gate, holder=approvals, grant_requests=lifecycle.on_request,
                                delegations=delegations, quotas=QuotaStore(store.client)),
        risk=risk,
        lifecycle=lifecycle,
        approvals=approvals,
        budgets=budgets,
        analytics=analytics,
        commands=Commands(ctx, gate, risk, settings, kafka, keyring, trust, life),
        start=functools.partial(_start, ctx, kafka, routing, trust),
        announce=functools.partial(announce_routing, ctx, kafka),
        sealer=sealer,
    )


def _redactor(settings: Settings, hmac_key: bytes) -> Redactor:
    """What the audit records keep of sensitive fields (keyed hashes, not the values)."""
    return Redactor.configured(hmac_key, free_text=settings.audit_redact_free_text,
                               extra=settings.audit_sensitive_fields.split(","))


def _serve_metrics(settings: Settings, kafka: KafkaAccess, ctx: WorkerContext,
                   gate: IdentityGate, inputs: Callable[[], Iterable[str]],
                   sealer: SealerWatch | None, *collectors: Collector) -> None:
    """Serve the worker's metrics, ``collectors`` and the scrape-time probes (the grant view,
    consumer and sealer lag) with them, unless the port is 0 or taken."""
    metrics = serve_metrics(ctx, settings.metrics_port)
    if metrics is None:
        return
    for collector in collectors:
        metrics.register(collector)
    metrics.register(ProbeCollector(Census(settings.redis_url), LagProbe(kafka, settings.app_id),
                                    _class_of(gate), inputs, sealer))


def _class_of(gate: IdentityGate) -> ClassOf:
    """An agent's class as the registry knows it (for bounded metric labels)."""
    def class_of(agent_id: str) -> str | None:
        profile = gate.profile(agent_id)
        return profile.agent_class if profile is not None else None
    return class_of


def _routing(settings: Settings, tenancy: Tenancy) -> GrantRouting:
    """Every namespace of the ceilings (every tenant's) gets its topic unless the setting lists
    them explicitly; once tenants are declared, each of them and the default tenant gets
    grant topics of its own (the shared ones are then the broker's log of record)."""
    policies = [tenancy.default, *tenancy.others.values()]
    shared = routing_for(settings.grant_namespaces,
                         (s for p in policies for c in p.classes.values() for s in c.ceiling))
    own = frozenset({*tenancy.others, DEFAULT_TENANT}) if tenancy.others else frozenset()
    return dataclasses.replace(shared, tenants=own)


def _tenant_of(gate: IdentityGate, tenancy: Tenancy) -> Callable[[str], str]:
    """The tenant of an agent: its registered profile's; for an agent the registry does not
    hold, the tenant its id is qualified by (registration refuses a default-tenant id with a
    known tenant's prefix), else the default tenant."""
    def tenant_of(agent_id: str) -> str:
        if not gate.ready.is_set():  # a timer's sweep can run before the registry is loaded
            raise BusError(f"the agent registry is not loaded yet: the tenant of {agent_id}, "
                           "and so the topics of its records, is not known")
        profile = gate.profile(agent_id)
        if profile is not None:
            return profile.tenant
        prefix, sep, _ = agent_id.partition(SEPARATOR)
        return prefix if sep and prefix in tenancy.others else DEFAULT_TENANT
    return tenant_of


async def _start(ctx: WorkerContext, kafka: KafkaAccess, routing: GrantRouting,
                 trust: RecordTrust) -> None:
    """Create the routed grant topics and the usage topic, follow the published key sets,
    announce the routed namespaces, then get the worker ready."""
    routed = [topics.by_name(t) for t in routing.topics()]
    routed += [topics.tenant_decisions(t) for t in sorted(routing.tenants)]
    await asyncio.to_thread(ensure_topics, kafka, routed)
    try:
        await asyncio.to_thread(ensure_topics, kafka, [topics.USAGE])
    except BusError as exc:
        log.error("could not create %s: %s", topics.USAGE.name, exc)
    await _follow_keys(ctx, kafka, trust)
    await announce_routing(ctx, kafka)  # before the first grant a view of a namespace may see
    await ctx.start(WORKER)


async def announce_routing(ctx: WorkerContext, kafka: KafkaAccess) -> None:
    """Tell every namespace grant topic which namespaces this worker routes (a view of one it
    does not route then says so instead of waiting for grants that never come)."""
    try:
        names = await asyncio.to_thread(grant_topic_names, kafka)
        await ctx.announce_routing(WORKER, also=names)
    except BusError as exc:
        log.error("could not announce the routed namespaces: %s (retried by the timer)", exc)


async def _follow_keys(ctx: WorkerContext, kafka: KafkaAccess, trust: RecordTrust) -> None:
    """Follow the JWKS topic into ``trust`` (for the life of the worker), retried until it can."""
    while True:
        try:
            view = await asyncio.to_thread(JwksView, kafka, trust)
            if not await asyncio.to_thread(view.wait_ready, 60.0):
                view.close()
                raise BusError(f"{topics.JWKS.name} could not be read within 60s")
            break
        except BusError as exc:
            log.error("not following the broker's key sets yet: %s (retrying)", exc)
            await asyncio.sleep(1.0)
    ctx.trusted.set()


async def _rebuild_view(store: RedisGrantStore, kafka: KafkaAccess, ctx: WorkerContext,
                        trust: RecordTrust) -> int:
    """Rebuild the grant view from the grant topic and audit the rebuild."""
    now = await store.now()
    folded = await asyncio.to_thread(rebuild.collect, kafka, now, trust)
    restored = await rebuild.apply(store, folded, now)
    await ctx.audit_until_written(rebuild_audit(
        f"worker {WORKER}", now, records=folded.records, restored=restored,
        revocations=len(folded.revocations), undecodable=folded.undecodable))
    return restored
