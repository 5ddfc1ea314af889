"""The agent side of the example: call the payments service with a grant token.

    python examples/freeze_account.py --agent fraud-detector-7 --account acct-1

Acts as the agent (its key from the agent key store, its Kafka user the ``agent`` role): finds
the agent's newest grant of ``payments:accounts.freeze`` that covers the account among the
broker's signed decisions, asks the broker for a grant token for the ``payments`` service, and
calls ``POST /accounts/{account}/freeze`` with it. Prints the service's answer; exits 0 only
when the service allowed the call.
"""

from __future__ import annotations

import argparse
import os
import sys

import httpx

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.bus import read_all
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from schemas.events import EscalationDecided
from schemas.topics import DECISIONS

SCOPE = "payments:accounts.freeze"


def newest_grant(kafka: KafkaAccess, jwks: JwksView, agent: str, account: str) -> str | None:
    """The id of the agent's newest grant of SCOPE on ``account``, from the decisions topic."""
    found = None
    for record in read_all(kafka, DECISIONS.name, trust=jwks.trust, reader="example"):
        event = record.event
        if (isinstance(event, EscalationDecided) and event.agent_id == agent
                and event.grant_id and SCOPE in event.granted_scopes
                and (not event.resources or account in event.resources)):
            found = event.grant_id
    return found


def main() -> int:
    """Find the grant, fetch a token, call the service; 0 when it allowed the call."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", required=True)
    parser.add_argument("--account", required=True)
    port = os.environ.get("PERMBROKER_EXAMPLE_PORT", "8081")  # where permbroker dev serves it
    parser.add_argument("--service", default=f"http://127.0.0.1:{port}")
    args = parser.parse_args()
    settings = Settings()
    kafka = KafkaAccess.from_settings(settings)
    with JwksView.from_settings(settings, kafka) as jwks:
        grant_id = newest_grant(kafka, jwks, args.agent, args.account)
        if grant_id is None:
            print(f"{args.agent} holds no grant of {SCOPE} on {args.account}: "
                  "ask for one with permbroker request", file=sys.stderr)
            return 1
        keys = AgentKeyStore.from_settings(settings)
        with AgentClient(args.agent, kafka, keys=keys, trust=jwks.trust) as agent:
            token = agent.grant_token(grant_id, "payments")
    try:
        answer = httpx.post(f"{args.service}/accounts/{args.account}/freeze",
                            headers={"Authorization": f"Bearer {token.token}"}, timeout=10)
    except httpx.HTTPError as exc:
        print(f"cannot reach the payments service at {args.service}: {exc} "
              "(is permbroker dev running?)", file=sys.stderr)
        return 1
    print(f"{answer.status_code} {answer.text}")
    return 0 if answer.is_success else 1


if __name__ == "__main__":
    sys.exit(main())
