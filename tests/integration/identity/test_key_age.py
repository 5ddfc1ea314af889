"""The policy's maximum key age on real Kafka + Redis: the worker warns the agent before the
limit, the agent SDK rotates on that warning without failing a request, and a signature by a
key past the limit is refused with a reason that says so.

The session's worker is restarted for this test with the session policy plus a ``lifecycle``
section of seconds (warned from 10 s of age, refused from 30 s), then restarted as it was.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.crypto.signing import sign_message
from broker.adapters.kafka.bus import Publisher
from broker.config import Settings
from broker.stack.credentials import role_access
from broker.stack.worker import WorkerProcess
from schemas import topics
from schemas.events import AgentProfile, AuditRecord, ModelInfo
from tests.support.factories import fraud_request
from tests.support.identities import Registrar, agent_client
from tests.support.taps import Tap
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
MAX_AGE_S, WARNING_S = 30, 20


@pytest.fixture
def short_key_life(worker: WorkerProcess, settings: Settings, tmp_path: Path
                   ) -> Iterator[WorkerProcess]:
    """The worker, restarted on the session policy with keys refused after 30 s of age."""
    bundle = tmp_path / "policy"
    shutil.copytree(settings.policy_path, bundle)
    doc = yaml.safe_load((bundle / "policy.yaml").read_text())
    doc["lifecycle"] = {"max_key_age": f"{MAX_AGE_S}s", "key_warning": f"{WARNING_S}s"}
    (bundle / "policy.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    worker.stop()
    short = WorkerProcess(settings.model_copy(update={"policy_path": bundle}),
                          role_access(settings, topics.WORKER), name="worker-key-age")
    short.start()
    try:
        short.wait_ready(180)
        yield short
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
    short_key_life: WorkerProcess, settings: Settings, registrar: Registrar, run_id: str,
    tap: Callable[[str], Tap],
) -> None:
    """Warned at 10 s of age: the SDK rotates before its next request, which is granted; the
    old key signing after 30 s is refused (identity:key-too-old, naming the maximum age)."""
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
    wait_until(lambda: _older_than(registered, MAX_AGE_S + 1), 60, "the old key to pass 30s")
    stale = fraud_request(agent)
    Publisher(role_access(settings, topics.AGENT), source=f"/agents/{agent}",
              signer=lambda m: sign_message(m, old, agent)).publish(topics.ESCALATIONS.name,
                                                                   stale)
    rejected = audit.wait_for(AuditRecord, lambda a: a.kind == "identity.rejected"
                              and a.subject_id == stale.request_id, timeout=60)[0]
    assert rejected.rules == ("identity:key-too-old",), rejected
    assert "maximum key age of 30s" in " ".join(rejected.reasons), rejected.reasons
