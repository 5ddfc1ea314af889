"""The policy's lifecycle limits on real Kafka + Redis: the worker warns the agent before the
maximum key age, the agent SDK rotates on that warning without failing a request, and a
signature by a key past the limit is refused with a reason that says so; a registration lapses
(requests denied, the baseline ends at every view) until an operator renews it; the inventory
flags an agent that never acted as dormant.

The session's worker is restarted for this module with the session policy plus a ``lifecycle``
section of seconds (keys warned from 10 s of age and refused from 40 s, registrations lapsing
after 25 s, dormant after 5 s), then restarted as it was.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.cli.main import app
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess, worker_env
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, ModelInfo
from tests.support.factories import fraud_request
from tests.support.identities import Registrar, agent_client, shared_trust
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
MAX_AGE_S, WARNING_S, REGISTRATION_S, DORMANT_S = 40, 30, 25, 5
READ = "payments:transactions.read"


@pytest.fixture(scope="module")
def short_key_life(worker: WorkerProcess, settings: Settings,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The worker, restarted on the session policy with lifecycle limits of seconds; the
    settings that name that policy."""
    bundle = tmp_path_factory.mktemp("lifecycle") / "policy"
    shutil.copytree(settings.policy_path, bundle)
    doc = yaml.safe_load((bundle / "policy.yaml").read_text())
    doc["lifecycle"] = {"max_key_age": f"{MAX_AGE_S}s", "key_warning": f"{WARNING_S}s",
                        "registration_ttl": f"{REGISTRATION_S}s",
                        "dormant_after": f"{DORMANT_S}s"}
    (bundle / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    short_settings = settings.model_copy(update={"policy_path": bundle})
    worker.stop()
    short = WorkerProcess(short_settings, role_access(settings, topics.WORKER),
                          name="worker-lifecycle")
    short.start()
    try:
        short.wait_ready(180)
        yield short_settings
    finally:
        short.stop()
        worker.start()
        worker.wait_ready(180)


def _fresh_agent(settings: Settings, registrar: Registrar, run_id: str) -> tuple[str, datetime]:
    """A new agent registered now (its key's age starts at the registration)."""
    agent = f"t{run_id}-age-{uuid.uuid4().hex[:6]}"
    key = AgentKeyStore.from_settings(settings).generate(agent).current
    profile = AgentProfile(agent_id=agent, agent_class="fraud-detection", owner="tests",
                           model=ModelInfo(name="test-model", version="1.0", digest="sha256:00"))
    registrar.operator.register(profile, key.jwk, reason="key age test")
    return agent, datetime.now(UTC)


def _older_than(registered: datetime, seconds: float) -> bool:
    return (datetime.now(UTC) - registered).total_seconds() > seconds


def test_the_sdk_rotates_on_the_warning_and_an_over_age_key_is_refused_saying_why(
    short_key_life: Settings, settings: Settings, registrar: Registrar, run_id: str,
    tap: Callable[[str], Tap],
) -> None:
    """Warned at 10 s of age: the SDK rotates before its next request, which is granted; the
    old key signing after 40 s is refused (identity:key-too-old, naming the maximum age)."""
    audit = tap(topics.AUDIT.name)
    agent, registered = _fresh_agent(settings, registrar, run_id)
    old = AgentKeyStore.from_settings(settings).load(agent).current
    with agent_client(settings, agent) as client:
        wait_until(lambda: _older_than(registered, MAX_AGE_S - WARNING_S + 1), 30,
                   "the key to enter its warning window")
        first = client.request_escalation(["payments:accounts.freeze"], resources=["acct-1"],
                                          duration_s=60, reason="pattern", confidence=0.95,
                                          risk_score=0.9)
        assert first.outcome == "granted" and client.rotations == 0, first.reasons
        warning = wait_until(lambda: client.key_warning(old.kid), 30, "the key-age warning")
        assert warning is not None and warning.refused_at > datetime.now(UTC)
        second = client.request_escalation(["payments:accounts.freeze"], resources=["acct-2"],
                                           duration_s=60, reason="pattern", confidence=0.95,
                                           risk_score=0.9)
        assert second.outcome == "granted", second.reasons
        assert client.rotations == 1 and client.identity is not None
        assert client.identity.kid != old.kid
    wait_until(lambda: _older_than(registered, MAX_AGE_S + 1), 60, "the old key to pass 40s")
    stale = fraud_request(agent)
    Publisher(role_access(settings, topics.AGENT), source=f"/agents/{agent}",
              signer=lambda m: sign_message(m, old, agent)).publish(topics.ESCALATIONS.name,
                                                                   stale)
    rejected = audit.wait_for(AuditRecord, lambda a: a.kind == "identity.rejected"
                              and a.subject_id == stale.request_id, timeout=60)[0]
    assert rejected.rules == ("identity:key-too-old",), rejected
    assert f"maximum key age of {MAX_AGE_S}s" in " ".join(rejected.reasons), rejected.reasons


def _inventory(settings: Settings) -> list[dict[str, Any]]:
    env = {k: v for k, v in worker_env(settings, role_access(settings, topics.OPERATOR)).items()
           if k.startswith("PERMBROKER_")}
    done = CliRunner().invoke(app, ["inventory", "--json"], env=env)
    assert done.exit_code == 0, done.output
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def test_a_registration_lapses_unless_renewed_and_an_idle_agent_is_flagged_dormant(
    short_key_life: Settings, settings: Settings, registrar: Registrar, run_id: str,
) -> None:
    """Never acted: flagged dormant after 5 s. After 25 s the registration lapses: the
    baseline ends at the view (judged at check time) and a request is denied
    (identity:registration-lapsed); agents renew restores both, at the renewal's token."""
    agent, registered = _fresh_agent(settings, registrar, run_id)
    with GrantView(role_access(settings, topics.SERVICE), trust=shared_trust(settings)) as view:
        assert view.wait_ready(30)
        wait_until(lambda: view.allows(agent, READ, "acct-1").allowed, 30, "the baseline")
        wait_until(lambda: _older_than(registered, DORMANT_S + 1), 30, "five idle seconds")
        (row,) = [r for r in _inventory(short_key_life) if r["agent_id"] == agent]
        assert "dormant" in row["flags"], row
        wait_until(lambda: not view.allows(agent, READ, "acct-1").allowed, REGISTRATION_S + 30,
                   "the registration to lapse at the view")
        assert "registration lapsed" in view.allows(agent, READ, "acct-1").reason
        with agent_client(settings, agent) as client:
            lapsed = client.request_escalation(
                ["payments:accounts.freeze"], resources=["acct-1"], duration_s=60,
                reason="pattern", confidence=0.95, risk_score=0.9)
            assert lapsed.outcome == "denied"
            assert {d.rule for d in lapsed.denied} == {"identity:registration-lapsed"}, lapsed
        renewed = registrar.operator.renew(agent, reason="still in service")
        assert view.allows(agent, READ, "acct-1", at_least=renewed.consistency_token).allowed
