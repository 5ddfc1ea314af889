"""MCP tool calls guarded by grants: ``McpGuard``, a server middleware. Imports mcp, sdk.resource.

    guard = McpGuard(view, verifier, ceiling=ceiling_of)     # this service's GrantView, verifier
    server = MCPServer("payments", middleware=[guard])

    @server.tool()
    @guard.requires("payments:accounts.freeze", resource="account_id")
    def freeze_account(account_id: str) -> str: ...

Every ``tools/call`` of a guarded tool is checked before the tool runs: the caller is the
subject of the grant tokens in the request's ``_meta`` (``io.permbroker/grant-tokens``, verified
by the service's ``GrantTokenVerifier``; never a header or a claimed name), and the local grant
view decides whether it holds the tool's scope on the resource its argument names. A refusal is
a tool error (``isError``) whose structured content names the scope and resource to escalate for,
and why (``DENIAL_KIND``). ``tools/list`` shows the unguarded tools, the guarded ones the caller
may call now, and those within its ceiling (``ceiling``: what it could escalate to); a caller
that presents no valid token is anonymous and sees only the unguarded tools. With a
``reporter`` (``broker.sdk.resource.usage``) every check of an identified caller is reported.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp_types import CallToolResult, ListToolsResult, TextContent

from broker.adapters.crypto.assertions import Agents
from broker.errors import TokenRejected
from broker.policy.evaluate import Policy
from broker.scopes import within
from broker.sdk.resource.enforce import Checker, TokenVerifier
from broker.sdk.resource.index import Verdict
from broker.sdk.resource.usage import UsageReporter
from broker.sdk.resource.view import GrantView

META_TOKENS = "io.permbroker/grant-tokens"
META_CONSISTENCY = "io.permbroker/consistency"
DENIAL_KIND = "permbroker.denied"
MAX_TOKENS = 16
F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class CatchesUp(Protocol):
    """A view that can wait for a consistency token (``GrantView``)."""

    def caught_up(self, token: str) -> str:
        """'' once the event the token names is applied, else why not."""


@dataclass(frozen=True)
class Guarded:
    """A guarded tool: the scope it needs and the argument that names the resource ('' none)."""

    scope: str
    resource: str = ""


@dataclass(frozen=True)
class Caller:
    """The agent the request's tokens prove (None: anonymous) and why not."""

    agent_id: str | None
    reason: str = ""


def tokens_of(meta: object) -> list[str]:
    """The grant tokens a request's ``_meta`` carries (at most MAX_TOKENS strings)."""
    found = meta.get(META_TOKENS) if isinstance(meta, Mapping) else None
    if not isinstance(found, list):
        return []
    return [t for t in found if isinstance(t, str)][:MAX_TOKENS]


def caller_of(verifier: TokenVerifier, tokens: Sequence[str]) -> Caller:
    """The one agent every valid token names; anonymous (fail closed) when none verifies or
    when valid tokens name different agents."""
    agents: set[str] = set()
    refused: list[str] = []
    for token in tokens:
        try:
            agents.add(verifier.verify(token).agent_id)
        except TokenRejected as exc:
            refused.append(f"{exc.code}: {exc}")
    if len(agents) == 1:
        return Caller(agents.pop())
    if len(agents) > 1:
        return Caller(None, "grant tokens of different agents on one request; fail closed")
    if refused:
        return Caller(None, "grant token refused (" + "; ".join(refused[:3]) + "); fail closed")
    return Caller(None, f"no grant token in the request's _meta ({META_TOKENS}); fail closed")


def denial(verdict: Verdict, caller: Caller, tool: str, need: Guarded,
           resource: str) -> CallToolResult:
    """The structured tool error of a refused call: what to escalate for, and why."""
    body = {"kind": DENIAL_KIND, "tool": tool, "scope": need.scope, "resource": resource,
            "agent_id": caller.agent_id, "reason": verdict.reason,
            "retry_later": verdict.unavailable}
    text = (f"permission denied: {tool} needs {need.scope} on {resource or 'any resource'} "
            f"({verdict.reason}); escalate for that scope and resource")
    return CallToolResult(content=[TextContent(text=text + "\n" + json.dumps(body))],
                          structured_content=body, is_error=True)


def policy_ceiling(policy: Policy, registry: Agents) -> Callable[[str], Sequence[str]]:
    """An agent's ceiling from the policy (its class, as the registry records it); nothing for
    an unknown, suspended or revoked agent."""
    def ceiling(agent_id: str) -> Sequence[str]:
        record = registry.get(agent_id)
        if record is None or record.status != "active":
            return ()
        found = policy.classes.get(record.profile.agent_class)
        return found.ceiling if found is not None else ()
    return ceiling


class McpGuard:
    """Server middleware: checks guarded tool calls and filters the tool listing per caller."""

    def __init__(self, view: Checker, verifier: TokenVerifier, *,
                 ceiling: Callable[[str], Sequence[str]] | None = None,
                 reporter: UsageReporter | None = None) -> None:
        self._view = view
        self._reporter = reporter
        self._verifier = verifier
        self._ceiling = ceiling
        self.tools: dict[str, Guarded] = {}

    def requires(self, scope: str, *, resource: str = "", name: str | None = None,
                 ) -> Callable[[F], F]:
        """Declare that the tool (named ``name``, else the function's name) needs ``scope`` on
        the resource its argument ``resource`` names. Put it under ``@server.tool()``."""
        def declare(fn: F) -> F:
            self.tools[name or fn.__name__] = Guarded(scope, resource)
            return fn
        return declare

    def check(self, tool: str, arguments: Mapping[str, Any], meta: object) -> CallToolResult | None:
        """None when the call may run; else the structured refusal."""
        need = self.tools.get(tool)
        if need is None:
            return None
        value = arguments.get(need.resource, "") if need.resource else ""
        named = isinstance(value, str | int) and not isinstance(value, bool)
        resource = str(value) if named else ""  # an id given as a number names it too
        at_least = meta.get(META_CONSISTENCY) if isinstance(meta, Mapping) else None
        at_least = at_least if isinstance(at_least, str) else None
        waited = self._unready(at_least)
        if waited:  # verifying a token against a view that cannot vouch would refuse it
            return denial(Verdict(False, waited, unavailable=True), Caller(None), tool, need,
                          resource)
        caller = caller_of(self._verifier, tokens_of(meta))
        if caller.agent_id is None:
            return denial(Verdict(False, caller.reason), caller, tool, need, resource)
        if need.resource and not resource:
            return denial(Verdict(False, f"argument {need.resource!r} names no resource"),
                          caller, tool, need, resource)
        verdict = self._view.allows(caller.agent_id, need.scope, resource)
        if self._reporter is not None:  # an identified caller's check (never blocks it)
            self._reporter.record(caller.agent_id, need.scope, resource, verdict)
        return None if verdict.allowed else denial(verdict, caller, tool, need, resource)

    def _unready(self, at_least: str | None) -> str:
        """Why the view cannot answer for this request yet ('' when it can): not current, or
        not yet holding the event of the caller's consistency token. The caller should retry
        later rather than escalate."""
        if isinstance(self._view, GrantView):
            fresh = self._view.freshness()
            if not fresh.fresh:
                return fresh.reason()
        if at_least and isinstance(self._view, CatchesUp):
            return self._view.caught_up(at_least)
        return ""

    def visible(self, tool: str, agent_id: str | None) -> bool:
        """Whether the listing shows ``tool`` to this caller (anonymous: unguarded tools only)."""
        need = self.tools.get(tool)
        if need is None:
            return True
        if agent_id is None:
            return False
        if self._ceiling is not None and within(need.scope, self._ceiling(agent_id)):
            return True
        return self._holds(agent_id, need.scope)

    def _holds(self, agent_id: str, scope: str) -> bool:
        """Whether the agent holds ``scope`` now, on some resource."""
        if isinstance(self._view, GrantView):
            return any(scope in g.scopes for g in self._view.active(agent_id))
        return bool(self._view.allows(agent_id, scope))

    async def __call__(self, ctx: ServerRequestContext[Any, Any],
                       call_next: CallNext) -> HandlerResult:
        params = ctx.params or {}
        meta = params.get("_meta")
        if ctx.method == "tools/call":
            name, arguments = params.get("name"), params.get("arguments") or {}
            # A malformed call goes on to the SDK, which refuses it; a guarded one is checked.
            if isinstance(name, str) and isinstance(arguments, Mapping):
                check = functools.partial(self.check, name, arguments, meta)
                # Waiting for a consistency token blocks: off the event loop.
                waits = isinstance(meta, Mapping) and META_CONSISTENCY in meta
                refused = await anyio.to_thread.run_sync(check) if waits else check()
                if refused is not None:
                    return refused
            return await call_next(ctx)
        if ctx.method != "tools/list":
            return await call_next(ctx)
        listed = await call_next(ctx)
        agent = caller_of(self._verifier, tokens_of(meta)).agent_id
        if isinstance(listed, ListToolsResult):
            return listed.model_copy(update={"tools": [t for t in listed.tools
                                                       if self.visible(t.name, agent)]})
        if isinstance(listed, dict) and isinstance(listed.get("tools"), list):
            # The SDK hands middleware the serialised result.
            return {**listed, "tools": [t for t in listed["tools"]
                                        if self.visible(str(t.get("name")), agent)]}
        return listed
