"""An MCP server whose payment tools permbroker guards (the official ``mcp`` SDK).

    python examples/mcp/server.py --port 8765

Run it with the settings of a resource service (its Kafka user is the ``service`` role). It
follows the ``permbroker.grants.payments`` topic (a local grant view), verifies the grant tokens
agents present in each request's ``_meta`` (audience ``payments``), and serves MCP over
streamable HTTP at ``/mcp``. ``lookup_account`` is open; ``freeze_account`` needs
``payments:accounts.freeze`` on the account it names, ``unfreeze_account``
``payments:accounts.unfreeze`` and ``issue_refund`` ``payments:refunds.issue``. A refused call is
a tool error naming the scope and account to escalate for; ``tools/list`` shows an agent the
tools it may call now or could escalate to (its ceiling, from the policy bundle). With
``--report-as <service>`` every check is reported to the audit (``permbroker audit checks``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import uvicorn
from mcp.server import MCPServer

from broker.adapters.crypto.service_key import load_service
from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.kafka.jwks import JwksView
from broker.adapters.kafka.registry_view import RegistryView
from broker.config import Settings
from broker.policy.loader import load_policy
from broker.sdk.mcp.guard import McpGuard, policy_ceiling
from broker.sdk.resource.enforce import Checker, TokenVerifier
from broker.sdk.resource.tokens import GrantTokenVerifier
from broker.sdk.resource.usage import UsageReporter
from broker.sdk.resource.view import GrantView
from schemas.topics import grant_topic

AUDIENCE = "payments"


def build(view: Checker, verifier: TokenVerifier,
          ceiling: Callable[[str], Sequence[str]] | None = None,
          reporter: UsageReporter | None = None) -> MCPServer:
    """The payments MCP server, its tools guarded by ``view`` and ``verifier``."""
    guard = McpGuard(view, verifier, ceiling=ceiling, reporter=reporter)
    server = MCPServer("payments", middleware=[guard])

    @server.tool()
    def lookup_account(account_id: str) -> str:
        """Public facts about an account (no grant needed)."""
        return f"{account_id}: open"

    @server.tool()
    @guard.requires("payments:accounts.freeze", resource="account_id")
    def freeze_account(account_id: str) -> str:
        """Freeze an account suspected of fraud."""
        return f"{account_id}: frozen"

    @server.tool()
    @guard.requires("payments:accounts.unfreeze", resource="account_id")
    def unfreeze_account(account_id: str) -> str:
        """Lift a freeze."""
        return f"{account_id}: unfrozen"

    @server.tool()
    @guard.requires("payments:refunds.issue", resource="account_id")
    def issue_refund(account_id: str, cents: int) -> str:
        """Refund an account (no fraud agent may ever do this)."""
        return f"{account_id}: refunded {cents}"

    return server


def main() -> None:
    """Serve the guarded tools until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--report-as", metavar="SERVICE", help="report every check, signed as "
                        "this registered enforcement point (permbroker services register)")
    args = parser.parse_args()
    settings = Settings()
    kafka = KafkaAccess.from_settings(settings)
    with JwksView.from_settings(settings, kafka) as keys, \
            GrantView(kafka, trust=keys.trust, topic=grant_topic(AUDIENCE).name) as view:
        registry = RegistryView(kafka, keys.trust)
        view.wait_ready(30)
        registry.wait_ready(30)
        verifier = GrantTokenVerifier(keys, audience=AUDIENCE, issuer=settings.token_issuer,
                                      grants=view)
        ceiling = policy_ceiling(load_policy(settings.policy_path), registry)
        reporter = UsageReporter.connect(kafka, service=load_service(settings, args.report_as)) \
            if args.report_as else None
        app = build(view, verifier, ceiling, reporter).streamable_http_app()
        try:
            uvicorn.run(app, host="127.0.0.1", port=args.port)
        finally:
            registry.close()
            if reporter is not None:
                reporter.close()


if __name__ == "__main__":
    main()
