"""The fraud-agent scenario end to end on real Kafka and Redis (L3: imports adapters, sdk, schemas).

Starts its own stack (separate dir and ports, wiped before and after), a worker process and a
resource-side grant view, plays the scenario, prints a timeline with absolute times, *checks*
every expected outcome, and stops everything it started. Exit 0 only if every check passed.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from broker.adapters.audit import check as audit_check
from broker.adapters.audit import log as audit_log
from broker.adapters.crypto.keystore import AgentKeyStore, ensure_identity_files
from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.crypto.trust import RecordTrust
from broker.adapters.kafka.jwks import JwksView
from broker.audit.views import grants_as_of
from broker.config import Settings
from broker.demo import behaviour as demo_behaviour
from broker.demo import identity as demo_identity
from broker.demo import steps
from broker.demo.steps import (
    FRAUD_AGENT,
    PAYMENTS_SERVICE,
    REPORT_AGENT,
    Scenario,
    console,
    fraud_request_like,
)
from broker.errors import BrokerError
from broker.sdk.agent.client import AgentClient
from broker.sdk.resource.view import GrantView
from broker.stack import local as stack
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentRevoked, GrantIssued

ROOT = Path(__file__).resolve().parents[2]


def demo_settings() -> Settings:
    """A stack of its own, so the demo never touches a user's stack or test data.

    ``PERMBROKER_DEMO_PORT_OFFSET`` shifts its ports when two demos share a machine.
    """
    off = int(os.environ.get("PERMBROKER_DEMO_PORT_OFFSET", "0"))
    return Settings(
        stack_dir=ROOT / ".stack" / "demo",
        kafka_port=39092 + off,
        kafka_controller_port=39093 + off,
        redis_port=36379 + off,
        kafka_bootstrap=f"127.0.0.1:{39092 + off}",
        redis_url=f"redis://127.0.0.1:{36379 + off}/0",
        policy_path=ROOT / "policies" / "fraud",
        app_id="permbroker-demo",
        grant_namespaces=("payments", "crm", "reports"),
    )


def play(s: Scenario, settings: Settings, view: GrantView, payments: GrantView) -> None:
    """The six steps of the fraud scenario, each checked (``payments``: the payments side)."""
    agent, trust = role_access(settings, topics.AGENT), view.trust
    started = datetime.now(UTC)
    keys = AgentKeyStore.from_settings(settings)  # each agent signs with its own key
    with AgentClient(FRAUD_AGENT, agent, keys=keys, trust=trust) as fraud, \
            AgentClient(REPORT_AGENT, agent, keys=keys, trust=trust) as reporter:
        d = steps.escalate(s, view, fraud)
        steps.enforce(s, payments, d)
        assert d.grant_id is not None
        token, verifier, jwks = demo_identity.token_step(s, settings, fraud, d.grant_id,
                                                           payments)
        demo_identity.impostor(s, settings, FRAUD_AGENT, REPORT_AGENT,
                               fraud_request_like(FRAUD_AGENT), trust)
        steps.outside_ceiling(s, fraud)
        d6 = steps.short_grant(s, reporter)
        sig = steps.anomaly(s, fraud, payments)
        steps.acknowledged(s, role_access(settings, topics.OPERATOR), sig, started, d.grant_id,
                           trust)
        demo_identity.token_refused(s, token, verifier)
        jwks.close()
        steps.quarantined(s, fraud)
        steps.lapsed(s, view, d6)


def _seen_at(s: Scenario, kind: type[GrantIssued] | type[AgentRevoked]) -> datetime | None:
    """When the resource side applied the fraud agent's first event of this kind."""
    for rec, at in s.seen:
        if isinstance(rec.event, kind) and rec.event.agent_id == FRAUD_AGENT:
            return datetime.fromtimestamp(at, UTC) + timedelta(milliseconds=1)
    return None


def audit_checks(s: Scenario, settings: Settings, started_at: datetime,
                 trust: RecordTrust) -> None:
    """The audit of the run: the whole chain verifies (every entry signed by the broker), and
    replay agrees with the grant view."""
    auditor = role_access(settings, topics.AUDITOR)
    result = audit_check.wait_sealed(auditor, audit_check.public_key_files(settings, []), 30,
                                     trust=trust)
    entries = sum(c.entries for c in result.chains.values())
    s.say("audit", f"{entries} entries in {len(result.chains)} hash chain(s), every one signed; "
          f"verify: {'OK' if result.ok else '; '.join(result.problems[:2])}")
    s.check("audit verify passes (chains, sequence, signed digests, raw coverage)", result.ok)
    records = [e.record() for e in audit_log.read_topic(auditor, trust=trust)]
    instants = [("before the escalation", started_at), ("while the grant was active",
                _seen_at(s, GrantIssued)), ("after the revocation", _seen_at(s, AgentRevoked))]
    held = []
    for label, at in instants:
        grants = [g for g in grants_as_of(records, at) if g.agent_id == FRAUD_AGENT] if at else []
        held.append(len(grants))
        s.say("audit", f"replay as of {label}: {FRAUD_AGENT} holds "
              + (", ".join(f"{', '.join(g.scopes)} until {g.ends_at:%H:%M:%S}Z" for g in grants)
                 or "nothing beyond its baseline"))
    s.check("replay --as-of agrees with the resource side at three instants", held == [0, 1, 0],
            str(held))


def run_demo(*, keep: bool = False) -> int:
    """Run the scenario; 0 when every check passed, 1 otherwise."""
    settings = demo_settings()
    s = Scenario()
    console.rule("[bold]permbroker demo: the fraud agent")
    worker = None
    stack_keys: list[JwksView] = []
    started = time.monotonic()
    try:
        stack.down(settings, wipe=True)
        stack.ensure_tools(lambda m: console.print(f"[dim]setup:[/] {m}"))
        st = stack.up(settings, progress=lambda m: console.print(f"[dim]setup:[/] {m}"))
        settings = stack.as_admin(settings)
        s.say("stack", f"Kafka {settings.kafka_version} at {st.bootstrap}, Redis at {st.redis_url}")
        for path in ensure_identity_files(settings):  # broker token keys, operator key (0600)
            s.say("setup", f"created {path}")
        worker = WorkerProcess(settings, role_access(settings, topics.WORKER))
        worker.start()
        worker.wait_ready(90)
        s.say("worker", f"faust worker pid {worker.pid} ready (policy {settings.policy_path.name})")
        demo_identity.register_agents(s, settings, (FRAUD_AGENT, REPORT_AGENT))
        service = role_access(settings, topics.SERVICE)
        keys = JwksView.from_settings(settings, service)  # the resource side's chain of trust
        stack_keys.append(keys)
        with GrantView(service, trust=keys.trust, on_event=s.on_event) as view, \
                GrantView(service, trust=keys.trust, topic=topics.GRANTS_PAYMENTS.name,
                          enforcement_point=ensure_service(settings, PAYMENTS_SERVICE)
                          ) as payments:
            if not (view.wait_ready(30) and payments.wait_ready(30)):
                raise BrokerError("the resource-side grant views did not catch up within 30s")
            started_at = datetime.now(UTC)
            play(s, settings, view, payments)
            demo_behaviour.detected_revocation(s, settings, view)
        audit_checks(s, settings, started_at, keys.trust)
    except BrokerError as exc:
        s.check("demo ran to completion", False, str(exc))
    finally:
        for jwks in stack_keys:
            jwks.close()
        if worker is not None:
            worker.stop()
        if not keep:
            stack.down(settings, wipe=True)
    return _summary(s, time.monotonic() - started, keep)


def _summary(s: Scenario, elapsed: float, keep: bool) -> int:
    failed = [c for c in s.checks if not c[1]]
    table = Table(
        "check",
        "result",
        title=f"{len(s.checks) - len(failed)}/{len(s.checks)} checks passed in {elapsed:.0f}s",
    )
    for what, ok, detail in s.checks:
        table.add_row(
            escape(what),
            ("[green]pass[/]" if ok else "[red]FAIL[/]") + (f" {escape(detail)}" if detail else ""),
        )
    console.print(table)
    console.print(
        "stack left running (permbroker stack down to stop)"
        if keep
        else "stopped the worker and the demo stack"
    )
    return 1 if failed or not s.checks else 0
