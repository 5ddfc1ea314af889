"""A grant view in a process of its own, for fault tests that freeze it (SIGSTOP) while Kafka
comes back. Imports broker, schemas.

``python -m tests.support.faults.view_proc TOPIC SCOPE RESOURCE AGENT...`` (settings from the
``PERMBROKER_*`` environment) prints one JSON line per check of each agent, about every 50 ms:
``{"t", "agent", "allowed", "mode", "grace_until", "reason"}``; ``{"ready": ...}`` once caught up;
``{"t", "revoked": agent}`` when it applies a revocation of an agent. Lines are printed under one
lock, so their order is the order things happened in this process.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import Record
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.sdk.resource.view import GrantView
from schemas.events import AgentRevoked

STALENESS_BOUND_S = 2.0
_LOCK = threading.Lock()


def _say(line: dict[str, object]) -> None:
    with _LOCK:
        print(json.dumps(line), flush=True)


def _applied(record: Record, _at: float) -> None:
    if isinstance(record.event, AgentRevoked):
        _say({"t": time.time(), "revoked": record.event.agent_id})


def main(topic: str, scope: str, resource: str, agents: list[str]) -> None:
    """Follow ``topic`` and check ``agents`` for ``scope`` on ``resource`` until killed."""
    settings = Settings()
    kafka = KafkaAccess.from_settings(settings)
    trust = JwksView.from_settings(settings, kafka).trust
    view = GrantView(kafka, trust=trust, topic=topic, staleness_bound_s=STALENESS_BOUND_S,
                     on_event=_applied)
    _say({"ready": view.wait_ready(60)})
    while True:
        for agent in agents:
            with _LOCK:  # the check and its line, atomically with respect to _applied
                verdict, fresh = view.allows(agent, scope, resource), view.freshness()
                print(json.dumps({"t": time.time(), "agent": agent, "allowed": verdict.allowed,
                                  "mode": fresh.mode, "grace_until": fresh.grace_until,
                                  "reason": verdict.reason}), flush=True)
        time.sleep(0.05)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
