"""The agent side of guarded MCP tools: ``GuardedTools``. Imports mcp, anyio, sdk.agent, sdk.mcp.

    async with Client("http://127.0.0.1:8765/mcp", cache=None) as session:
        tools = GuardedTools(session, agent, audience="payments", evidence=why)
        result = await tools.call_tool("freeze_account", {"account_id": "acct-1"})

Every request carries the grant tokens the agent holds for the server's ``audience`` in its
``_meta`` (refreshed before they expire, while their grant lives). When a call is refused with
the guard's structured error, ``evidence(scope, resource)`` says whether and why the agent asks
for that scope: the helper escalates (signed by the agent's ``AgentClient``), fetches a grant
token for the new grant and retries the call once, carrying the decision's consistency token so
the server's view has the grant before it checks. No evidence, a denied escalation or a
refusal for any other reason returns the refusal as it is; every decision is kept in
``decisions``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import anyio
from mcp import Client
from mcp_types import CallToolResult, ListToolsResult, RequestParamsMeta

from broker.errors import CommandRefused
from broker.sdk.agent.client import AgentClient, GrantToken
from broker.sdk.mcp.guard import DENIAL_KIND, META_CONSISTENCY, META_TOKENS
from schemas.events import EscalationDecided

REFRESH_BEFORE = timedelta(seconds=5)


@dataclass(frozen=True)
class Evidence:
    """Why the agent asks for a scope on a resource: what its escalation request says."""

    reason: str
    confidence: float
    risk_score: float = 0.0
    duration_s: int = 300
    case_id: str | None = None


def refusal(result: CallToolResult) -> Mapping[str, Any] | None:
    """The guard's structured refusal in a tool result, if it is one."""
    body = result.structured_content
    if result.is_error and isinstance(body, Mapping) and body.get("kind") == DENIAL_KIND:
        return body
    return None


class GuardedTools:
    """Calls an MCP server's guarded tools as one agent, escalating when a call is refused."""

    def __init__(self, session: Client, agent: AgentClient, *, audience: str,
                 evidence: Callable[[str, str], Evidence | None],
                 decision_timeout: float = 30.0) -> None:
        self._session = session
        self._agent = agent
        self.audience = audience
        self._evidence = evidence
        self._timeout = decision_timeout
        self._tokens: dict[str, tuple[GrantToken, datetime]] = {}  # grant id -> token, grant end
        self._consistency: str | None = None
        self.decisions: list[EscalationDecided] = []

    async def list_tools(self) -> ListToolsResult:
        """The tools this agent may call now or could escalate to (as the server shows them)."""
        return await self._session.list_tools(meta=await self._meta(), cache_mode="refresh")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call a tool; on a guard refusal with evidence, escalate and retry once if granted."""
        result = await self._session.call_tool(name, arguments, meta=await self._meta())
        need = refusal(result)
        if need is None or need.get("retry_later"):
            return result
        scope, resource = str(need.get("scope")), str(need.get("resource") or "")
        evidence = self._evidence(scope, resource)
        if evidence is None or not await self._escalate(scope, resource, evidence):
            return result
        return await self._session.call_tool(name, arguments, meta=await self._meta())

    async def _escalate(self, scope: str, resource: str, evidence: Evidence) -> bool:
        """Ask for ``scope`` on ``resource``; True once granted and a token is held for it."""
        ask = functools.partial(
            self._agent.request_escalation, [scope], resources=[resource] if resource else [],
            duration_s=evidence.duration_s, reason=evidence.reason,
            confidence=evidence.confidence, risk_score=evidence.risk_score,
            case_id=evidence.case_id, timeout=self._timeout)
        decision = await anyio.to_thread.run_sync(ask)
        self.decisions.append(decision)
        if decision.outcome != "granted" or not decision.grant_id or not decision.expires_at:
            return False
        token = await anyio.to_thread.run_sync(self._token, decision.grant_id)
        self._tokens[decision.grant_id] = (token, decision.expires_at)
        self._consistency = decision.consistency_token
        return True

    def _token(self, grant_id: str) -> GrantToken:
        return self._agent.grant_token(grant_id, self.audience, timeout=self._timeout)

    async def _meta(self) -> RequestParamsMeta:
        """The request's _meta: the live grant tokens (refreshed when about to expire)."""
        now = datetime.now(UTC)
        for grant_id, (token, ends) in list(self._tokens.items()):
            if ends <= now:
                del self._tokens[grant_id]
            elif token.expires_at - REFRESH_BEFORE <= now:
                try:
                    fresh = await anyio.to_thread.run_sync(self._token, grant_id)
                except CommandRefused:  # revoked or released meanwhile: nothing to present
                    del self._tokens[grant_id]
                    continue
                self._tokens[grant_id] = (fresh, ends)
        meta: dict[str, Any] = {META_TOKENS: [t.token for t, _ in self._tokens.values()]}
        if self._consistency:
            meta[META_CONSISTENCY] = self._consistency
        return cast(RequestParamsMeta, meta)  # an open map; mypy cannot type its extra keys
