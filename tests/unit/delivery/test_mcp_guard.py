"""The MCP guard without Kafka: the example server in process, real grant tokens, a stub view.

The view is a stub (a table of grants); the tokens are real, minted with a broker keyring and
checked by the real ``GrantTokenVerifier``; the client is the mcp SDK's, connected in process.
The same server is tested over HTTP against the live stack in tests/integration.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer

from broker.adapters.crypto.jose import SigningKey
from broker.adapters.crypto.keystore import BrokerKey, write_keyring
from broker.adapters.crypto.tokens import BrokerKeyring, mint_grant_token
from broker.sdk.mcp.agent import refusal
from broker.sdk.mcp.guard import META_TOKENS, tokens_of
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.tokens import GrantTokenVerifier, StaticKeys
from schemas.events import GrantIssued

ROOT = Path(__file__).resolve().parents[3]
FREEZE = "payments:accounts.freeze"
NOW = datetime.now(UTC).replace(microsecond=0)
CEILING = ("payments:accounts.*",)


class StubView:
    """Agent a-1 holds FREEZE on acct-1; 'stale' makes every answer unavailable."""

    def __init__(self, stale: bool = False) -> None:
        self.stale = stale

    def allows(self, agent_id: str, scope: str, resource: str = "", now: Any = None, *,
               at_least: Any = None) -> Verdict:
        if self.stale:
            return Verdict(False, "grant view last proven current 9.0s ago", unavailable=True)
        if (agent_id, scope) == ("a-1", FREEZE) and resource in ("acct-1", ""):
            return Verdict(True, "granted")
        return Verdict(False, f"no active grant of {scope} on {resource} for {agent_id}")

    def grant_state(self, agent_id: str, grant_id: str) -> str:
        return "active"


@pytest.fixture
def keyring(tmp_path: Path) -> BrokerKeyring:
    """A broker keyring with one active key."""
    path = tmp_path / "broker.json"
    write_keyring(path, "permbroker", [BrokerKey(SigningKey.generate(), NOW, NOW)])
    return BrokerKeyring(path)


def token_of(keyring: BrokerKeyring, agent: str) -> str:
    now = datetime.now(UTC)
    grant = GrantIssued(
        grant_id=f"grant-{agent}", agent_id=agent, request_id="req-1", scopes=(FREEZE,),
        resources=("acct-1",), issued_at=now, expires_at=now + timedelta(minutes=5),
        policy_revision="sha256:ab", rules=("r",), model_version="1", model_digest="sha256:0")
    token, _exp = mint_grant_token(grant, "payments", keyring, now=now, max_ttl_s=60)
    return token


def example_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mcp_example_server_unit",
                                                  ROOT / "examples" / "mcp" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server(keyring: BrokerKeyring, view: StubView | None = None,
           ceiling: tuple[str, ...] | None = CEILING) -> MCPServer:
    view = view or StubView()
    verifier = GrantTokenVerifier(StaticKeys(keyring.jwks(NOW).document()), audience="payments",
                                  grants=view)
    build = example_server().build
    return build(view, verifier, None if ceiling is None else (lambda agent: ceiling))


def meta(*tokens: str) -> Any:
    return {META_TOKENS: list(tokens)}


async def listed(srv: MCPServer, *tokens: str) -> set[str]:
    async with Client(srv, cache=None) as client:
        return {t.name for t in (await client.list_tools(meta=meta(*tokens))).tools}


async def test_listing_shows_open_tools_to_anonymous_callers_and_the_ceiling_to_agents(
    keyring: BrokerKeyring,
) -> None:
    """No token: only the open tool; an agent: what it holds now plus its ceiling, never more;
    without a ceiling, only what it holds."""
    token = token_of(keyring, "a-1")
    assert await listed(server(keyring)) == {"lookup_account"}
    assert await listed(server(keyring), "not-a-token") == {"lookup_account"}
    assert await listed(server(keyring), token) == {"lookup_account", "freeze_account",
                                                    "unfreeze_account"}
    assert await listed(server(keyring, ceiling=None), token) == {"lookup_account",
                                                                  "freeze_account"}


async def test_a_refused_call_names_the_scope_and_resource_and_the_tool_does_not_run(
    keyring: BrokerKeyring,
) -> None:
    """Refusals are tool errors naming scope, resource and reason; the allowed call runs."""
    token = token_of(keyring, "a-1")
    async with Client(server(keyring), cache=None) as client:
        anonymous = refusal(await client.call_tool("freeze_account", {"account_id": "acct-1"}))
        assert anonymous is not None and anonymous["scope"] == FREEZE
        assert anonymous["resource"] == "acct-1" and anonymous["agent_id"] is None
        assert "no grant token" in anonymous["reason"]
        elsewhere = refusal(await client.call_tool("freeze_account", {"account_id": "acct-2"},
                                                   meta=meta(token)))
        assert elsewhere is not None and elsewhere["agent_id"] == "a-1"
        assert elsewhere["resource"] == "acct-2" and not elsewhere["retry_later"]
        done = await client.call_tool("freeze_account", {"account_id": "acct-1"},
                                      meta=meta(token))
        assert not done.is_error and refusal(done) is None
        assert getattr(done.content[0], "text", "") == "acct-1: frozen"
        assert not (await client.call_tool("lookup_account", {"account_id": "x"})).is_error


async def test_tokens_of_two_agents_or_a_stale_view_fail_closed(keyring: BrokerKeyring) -> None:
    """Valid tokens naming different agents identify no one; a stale view says retry later."""
    mixed = meta(token_of(keyring, "a-1"), token_of(keyring, "a-2"))
    async with Client(server(keyring), cache=None) as client:
        found = refusal(await client.call_tool("freeze_account", {"account_id": "acct-1"},
                                               meta=mixed))
        assert found is not None and "different agents" in found["reason"]
    async with Client(server(keyring, StubView(stale=True)), cache=None) as client:
        stale = refusal(await client.call_tool("freeze_account", {"account_id": "acct-1"},
                                               meta=meta(token_of(keyring, "a-1"))))
        assert stale is not None and stale["retry_later"]


def test_tokens_are_read_only_from_the_meta_key_as_strings() -> None:
    """Anything but a list of strings under the key carries no token; at most 16 are read."""
    assert tokens_of(None) == [] and tokens_of({META_TOKENS: "t"}) == []
    assert tokens_of({META_TOKENS: ["a", 1, "b"]}) == ["a", "b"]
    assert len(tokens_of({META_TOKENS: ["t"] * 100})) == 16
