"""MCP tool calls guarded by grants: a real MCP client and server (the mcp SDK) over HTTP."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import uvicorn
from mcp import Client
from mcp_types import CallToolResult, ListToolsResult

from broker.adapters.crypto.service_key import ensure_service
from broker.adapters.kafka.bus import Publisher
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import RegistryView
from broker.config import Settings
from broker.policy.loader import load_policy
from broker.sdk.mcp.agent import Evidence, GuardedTools, refusal
from broker.sdk.mcp.guard import policy_ceiling
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.usage import UsageReporter
from broker.sdk.resource.view import GrantView
from broker.stack.credentials import role_access
from schemas import topics
from schemas.topics import grant_topic
from tests.support.audit import cli
from tests.support.factories import anomaly
from tests.support.identities import agent_client, shared_trust
from tests.support.waits import wait_until

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[3]
FREEZE = "payments:accounts.freeze"
FLAGGED = "acct-1"  # the account the agent's own analysis flagged


def example(name: str) -> ModuleType:
    """examples/mcp/<name>.py, as a module."""
    spec = importlib.util.spec_from_file_location(f"mcp_example_{name}",
                                                  ROOT / "examples" / "mcp" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port in a thread; its MCP endpoint's URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "the MCP server listening")
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def audited_checks(settings: Settings, *args: str) -> list[dict[str, Any]]:
    """``permbroker audit checks ... --json`` as an operator; [] while nothing matches."""
    ran = cli(settings, "audit", "checks", *args, "--json")
    return list(json.loads(ran.stdout)) if ran.returncode == 0 else []


def names(listed: ListToolsResult) -> set[str]:
    """The tool names of a listing."""
    return {tool.name for tool in listed.tools}


def flagged_only(scope: str, resource: str) -> Evidence:
    """The agent's evidence: strong for the account it flagged, weak for any other."""
    if resource == FLAGGED:
        return Evidence("card-testing ring on this account", confidence=0.95, risk_score=0.93)
    return Evidence("no finding, just curious", confidence=0.95, risk_score=0.1)


def text(result: CallToolResult) -> str:
    """The first text block of a tool result."""
    block = result.content[0]
    return str(getattr(block, "text", ""))


@dataclass
class Served:
    """The example MCP server, serving, and the service's grant view behind it."""

    url: str
    view: GrantView
    reporter: UsageReporter


@pytest.fixture(scope="module")
def served(worker: object, settings: Settings) -> Iterator[Served]:
    """examples/mcp/server.py, built on the payments grant view, served over HTTP."""
    service = role_access(settings, topics.SERVICE)
    with JwksView.from_settings(settings, service) as jwks, \
            GrantView(service, trust=shared_trust(settings),
                      topic=grant_topic("payments").name) as view:
        registry = RegistryView(service, jwks.trust)
        reporter = UsageReporter.connect(service, service=ensure_service(settings, "payments-mcp"),
                                         interval_s=0.2)
        try:
            assert jwks.wait_ready(30) and view.wait_ready(30) and registry.wait_ready(30)
            verifier = GrantTokenVerifier(jwks, audience="payments",
                                          issuer=settings.token_issuer, grants=view)
            ceiling = policy_ceiling(load_policy(settings.policy_path), registry)
            app = example("server").build(view, verifier, ceiling, reporter).streamable_http_app()
            with serving(app) as url:
                yield Served(url, view, reporter)
        finally:
            registry.close()
            reporter.close()


async def test_fraud_flow_through_guarded_mcp_tools(
    served: Served, settings: Settings, publisher: Publisher, agents: Callable[[str], str],
) -> None:
    """A freeze call is refused naming the scope; the helper escalates and the retry succeeds on
    the flagged account only; a risk signal revokes the agent mid-session and the next call is
    refused; tools/list follows (anonymous, then the ceiling, then anonymous again). The
    checks are reported: `permbroker audit checks` names the agent and the grant."""
    agent = agents("f")
    with agent_client(settings, agent) as client:
        async with Client(served.url, cache=None) as session:
            tools = GuardedTools(session, client, audience="payments", evidence=flagged_only)
            await _play(tools, session, served.view, publisher, agent)
    granted = tools.decisions[0].grant_id
    served.reporter.flush()
    # Who froze the flagged account, under which grant: the audit answers from the reports.
    rows = wait_until(lambda: [r for r in audited_checks(settings, "--resource", FLAGGED,
                                                         "--scope", FREEZE)
                               if r["agent_id"] == agent], 60, "the check in the audit", every=1)
    assert [(r["outcome"], r["grant_id"]) for r in rows] == [("allowed", granted)]
    refused = wait_until(lambda: audited_checks(settings, "--agent", agent, "--denied"), 60,
                         "the denied check in the audit", every=1)
    assert [(r["check"]["scope"], r["grant_id"]) for r in refused] == [(FREEZE, None)]
    assert served.reporter.dropped_total == 0


async def test_the_example_agent_freezes_only_what_it_flagged(
    served: Served, settings: Settings, agents: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """examples/mcp/agent.py: 0 and 'frozen' for a flagged account, 1 with the scope named for
    an account it did not flag (it does not even ask)."""
    play = example("agent").play
    with agent_client(settings, agents("f")) as client:
        assert await play(served.url, client, "acct-5", {"acct-5"}) == 0
        assert "acct-5: frozen" in capsys.readouterr().out
        assert await play(served.url, client, "acct-6", {"acct-5"}) == 1
        assert f"needs {FREEZE} on acct-6" in capsys.readouterr().out


async def _play(tools: GuardedTools, session: Client, view: GrantView, publisher: Publisher,
                agent: str) -> None:
    assert names(await tools.list_tools()) == {"lookup_account"}  # no token: anonymous
    bare = await session.call_tool("freeze_account", {"account_id": FLAGGED})
    denied = refusal(bare)
    assert denied is not None and denied["scope"] == FREEZE and denied["resource"] == FLAGGED

    frozen = await tools.call_tool("freeze_account", {"account_id": FLAGGED})
    assert not frozen.is_error and text(frozen) == f"{FLAGGED}: frozen"
    grant = tools.decisions[-1]
    assert grant.outcome == "granted" and grant.grant_id
    # Callable now (freeze) or within the fraud class's ceiling (unfreeze); refunds never.
    assert names(await tools.list_tools()) == {"lookup_account", "freeze_account",
                                               "unfreeze_account"}

    other = await tools.call_tool("freeze_account", {"account_id": "acct-9"})
    denied = refusal(other)
    assert denied is not None and denied["resource"] == "acct-9" and denied["agent_id"] == agent
    assert tools.decisions[-1].outcome == "denied"  # weak evidence: policy says no

    publisher.publish(topics.RISK.name, anomaly(agent))
    wait_until(lambda: view.grant_state(agent, str(grant.grant_id)) == "ended", 15,
               "the revocation reached the service's view")
    after = await tools.call_tool("freeze_account", {"account_id": FLAGGED})
    denied = refusal(after)
    assert denied is not None and denied["scope"] == FREEZE and "grant-ended" in denied["reason"]
    assert tools.decisions[-1].outcome == "denied"  # quarantined: no new grant
    assert names(await tools.list_tools()) == {"lookup_account"}
