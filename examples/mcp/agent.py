"""A scripted fraud agent calling the guarded payments tools over MCP (no LLM).

    python examples/mcp/server.py --port 8765 &          # the service's settings
    python examples/mcp/agent.py --agent fraud-detector-7 --flagged acct-1 --account acct-1

Acts as the agent (its key from the agent key store, its Kafka user the ``agent`` role). Lists
the tools it may see, then calls ``freeze_account`` on ``--account``: the server refuses (no
grant yet) naming the scope; the helper escalates with the agent's evidence (strong only for
the accounts in ``--flagged``), fetches a grant token for the new grant and retries. Prints
each step; exits 0 only when the account was frozen.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from mcp import Client

from broker.adapters.crypto.keystore import AgentKeyStore
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.jwks import JwksView
from broker.config import Settings
from broker.sdk.agent.client import AgentClient
from broker.sdk.mcp.agent import Evidence, GuardedTools, refusal


async def play(url: str, agent: AgentClient, account: str, flagged: set[str]) -> int:
    """List, call, show what happened; 0 when the account was frozen."""
    def evidence(scope: str, resource: str) -> Evidence | None:
        if resource in flagged:
            return Evidence(f"fraud pattern on {resource}", confidence=0.95, risk_score=0.93)
        return None  # no finding: do not ask

    async with Client(url, cache=None) as session:
        tools = GuardedTools(session, agent, audience="payments", evidence=evidence)
        listed = await tools.list_tools()
        print("tools I may see:", ", ".join(sorted(t.name for t in listed.tools)))
        result = await tools.call_tool("freeze_account", {"account_id": account})
        for decision in tools.decisions:
            print(f"escalation {decision.outcome}: {decision.grant_id or decision.reasons}")
        denied = refusal(result)
        if denied is not None:
            print(f"refused: {denied['tool']} needs {denied['scope']} on {denied['resource']} "
                  f"({denied['reason']})")
            return 1
        print("result:", getattr(result.content[0], "text", result.content[0]))
        listed = await tools.list_tools()
        print("tools I may see now:", ", ".join(sorted(t.name for t in listed.tools)))
        return 0


def main() -> int:
    """Parse the arguments and play the flow."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", required=True)
    parser.add_argument("--account", required=True)
    parser.add_argument("--flagged", action="append", default=[],
                        help="an account the agent's analysis flagged (repeatable)")
    parser.add_argument("--url", default="http://127.0.0.1:8765/mcp")
    args = parser.parse_args()
    settings = Settings()
    kafka = KafkaAccess.from_settings(settings)
    with JwksView.from_settings(settings, kafka) as jwks, \
            AgentClient(args.agent, kafka, keys=AgentKeyStore.from_settings(settings),
                        trust=jwks.trust) as agent:
        return asyncio.run(play(args.url, agent, args.account, set(args.flagged)))


if __name__ == "__main__":
    sys.exit(main())
