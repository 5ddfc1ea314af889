"""A policy change in one tenant's bundle leaves every other tenant's decisions as they were, on
real worker processes.

The session worker gives way to a worker of the same group with two tenant bundles (acme and
globex, copies of the suite's bundle); both tenants' agents of the same name ask for the same
scope; the worker is restarted with acme's bundle changed (a rule refuses the scope) and both ask
again. Afterwards the session worker takes the partitions back.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import EscalationDecided
from tests.support.faults.report import Figures
from tests.support.identities import Registrar, agent_client

FREEZE = "payments:accounts.freeze"
TENANTS = ("acme", "globex")


@pytest.fixture
def tenant_worker(worker: WorkerProcess, settings: Settings,
                  tmp_path: Path, test_policy: Path) -> Iterator[WorkerProcess]:
    """A worker with acme's and globex's bundles in the session worker's place (and back)."""
    root = tmp_path / "tenants"
    for tenant in TENANTS:
        shutil.copytree(test_policy, root / tenant)
    tenants = settings.model_copy(update={"tenant_policies_dir": root})
    proc = WorkerProcess(tenants, role_access(settings, topics.WORKER), name="tenants-worker")
    worker.stop()
    try:
        proc.start()
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()
        worker.start()
        worker.wait_ready()


def _decide(settings: Settings, ids: dict[str, str]) -> dict[str, EscalationDecided]:
    out = {}
    for tenant, agent in ids.items():
        client = agent_client(settings, agent)
        try:
            out[tenant] = client.request_escalation(
                [FREEZE], resources=["acct-7"], duration_s=60, reason="same ask, both tenants",
                confidence=0.95, timeout=120)
        finally:
            client.close()
    return out


def _refuse_freeze(bundle: Path) -> None:
    doc = bundle / "policy.yaml"
    policy = yaml.safe_load(doc.read_text())
    policy["deny_rules"].append({"id": "acme-no-freeze", "scopes": [FREEZE], "when": "true",
                                 "reason": "acme freezes accounts by hand"})
    doc.write_text(yaml.safe_dump(policy, sort_keys=False))


def _shape(d: EscalationDecided) -> tuple[object, ...]:
    """What a policy decides: outcome, rules, denials, scopes, duration and bundle revision."""
    return (d.outcome, d.matched_rules, tuple((x.scope, x.rule) for x in d.denied),
            d.granted_scopes, d.duration_s, d.clamped_by, d.policy_revision)


@pytest.mark.criterion("T")
def test_a_policy_change_in_one_tenant_leaves_the_other_tenants_decisions_alone(
    tenant_worker: WorkerProcess, settings: Settings, registrar: Registrar, run_id: str,
    figures: Figures,
) -> None:
    """acme's bundle changes between two rounds: acme's decision changes, globex's does not."""
    ids = registrar.twins(f"twin-{run_id}", TENANTS, agent_class="flood-test",
                          confidence_threshold=0.5)
    before = _decide(settings, ids)
    root = tenant_worker.settings.tenant_policies_dir
    assert root is not None
    tenant_worker.stop()
    _refuse_freeze(root / "acme")
    tenant_worker.start()
    tenant_worker.wait_ready()
    after = _decide(settings, ids)

    figures.check("acme before its change", before["acme"].outcome, "granted",
                  before["acme"].outcome == "granted")
    figures.check("acme after its change", f"{after['acme'].outcome} "
                  f"({', '.join(x.rule for x in after['acme'].denied)})",
                  "denied (acme-no-freeze)",
                  {x.rule for x in after["acme"].denied} == {"acme-no-freeze"})
    figures.check("acme's bundle revision moved", "yes" if before["acme"].policy_revision
                  != after["acme"].policy_revision else "no", "yes",
                  before["acme"].policy_revision != after["acme"].policy_revision)
    figures.check("globex before / after acme's change",
                  f"{before['globex'].outcome} / {after['globex'].outcome}", "granted / granted",
                  before["globex"].outcome == after["globex"].outcome == "granted")
    figures.equal("globex decision fields that changed (of 7: outcome ... revision)",
                  sum(a != b for a, b in zip(_shape(before["globex"]),
                                             _shape(after["globex"]), strict=True)), 0)
    figures.verify()
