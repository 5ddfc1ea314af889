"""A client waiting for an answer that cannot come says why: Kafka's refusal to let it read the
decision topic when its follower saw one, else where to look (is a worker running?)."""

from __future__ import annotations

import pytest

from broker.errors import DecisionTimeout
from broker.sdk.agent.client import Answers

REFUSED = ("Kafka refuses to let agent read permbroker.decisions: Broker: Topic authorization "
           "failed (TOPIC_AUTHORIZATION_FAILED)")


class Refused(Answers):
    def _stalled(self) -> str:
        return REFUSED


@pytest.mark.parametrize("wait", ["wait", "wait_pending", "wait_answer"])
def test_a_timeout_names_kafkas_refusal_when_the_reader_saw_one(wait: str) -> None:
    with pytest.raises(DecisionTimeout) as refused:
        getattr(Refused(), wait)("req-1", 0.01)
    assert REFUSED in str(refused.value)
    assert "restart the client once its ACLs allow it" in str(refused.value)
    assert "is a worker running" not in str(refused.value)
    with pytest.raises(DecisionTimeout) as plain:
        getattr(Answers(), wait)("req-1", 0.01)
    assert "is a worker running" in str(plain.value)
    assert "refuses" not in str(plain.value)
