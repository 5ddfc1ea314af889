"""Which agents this CLI invocation's operator may read about: its tenants' only. L3.

Imports broker (adapters.crypto.keystore, adapters.kafka.registry_view, identity.tenants) and the
CLI context.

The operator is the principal of the operator key the CLI signs with
(``PERMBROKER_OPERATOR_KEY_FILE``); its tenants come from the operator tenants file
(``PERMBROKER_OPERATOR_TENANTS_FILE``), as for the worker and the HTTP API. An operator listed
there reads, through ``audit``, ``grants``, ``agents`` and ``inventory``, only records about
registered agents of its tenants; one not listed reads everything. With a tenants file and no
operator key the reads are refused: an unknown operator is not assumed to be unscoped.

The tenants file scopes what the CLI shows; the wall is the credentials. The broker's operator
role reaches every tenant's records in Kafka and Redis; a declared tenant's operator user
(``operator@acme``: ``permbroker stack env --role operator@acme``) reaches only its tenant's
(broker/adapters/kafka/acls.py ``tenant_operator``, broker/stack/redisusers.py). A CLI that
connects as such a user is scoped to that tenant, and finds the tenant's agents in the
registry, since it may not list the store's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from broker.adapters.crypto.keystore import load_operator, load_operator_scopes
from broker.adapters.kafka.registry_view import read_registry
from broker.cli.context import cli_kafka, cli_settings, read_trusted
from broker.cli.output import fail
from broker.errors import BrokerError, KeyFileError
from schemas.topics import walled_tenant

T = TypeVar("T")


@dataclass(frozen=True)
class Scope:
    """The tenants an operator reads (None: every tenant) and the registered agents' tenants."""

    principal: str | None = None
    tenants: frozenset[str] | None = None
    tenant_of: Mapping[str, str] = field(default_factory=dict)

    @property
    def everything(self) -> bool:
        """Whether nothing is filtered out."""
        return self.tenants is None

    def sees(self, agent_id: str | None) -> bool:
        """Whether a record about ``agent_id`` is shown: a scoped operator sees registered
        agents of its tenants only (and nothing about no agent, such as a broker-wide record)."""
        if self.tenants is None:
            return True
        return agent_id is not None and self.tenant_of.get(agent_id) in self.tenants

    def agents(self) -> list[str]:
        """The registered agents this operator sees (of a scoped operator only)."""
        return sorted(a for a in self.tenant_of if self.sees(a))

    def keep(self, items: list[T], agent_of: Callable[[T], str | None]) -> list[T]:
        """``items`` about an agent this operator sees."""
        return items if self.tenants is None else [i for i in items if self.sees(agent_of(i))]


def operator_scope() -> Scope:
    """This invocation's scope (KeyFileError: a tenants file but no readable operator key).

    The tenants are those the tenants file gives the operator's key and, when the CLI reaches
    Kafka as a tenant's operator user (``operator@acme``), that tenant (both: the tenants in
    both)."""
    settings = cli_settings()
    tenant = walled_tenant(settings.kafka_username or "")
    walled = None if tenant is None else frozenset({tenant})
    scopes = load_operator_scopes(settings.operator_tenants_file)
    if not scopes and walled is None:
        return Scope()
    principal, own = None, None
    if scopes:
        try:
            principal, _key = load_operator(settings.key_path("operator"))
        except KeyFileError as exc:
            raise KeyFileError(f"operators are scoped to tenants "
                               f"({settings.operator_tenants_file}), and this CLI has no "
                               f"operator key to say whose reads these are: {exc}") from exc
        own = scopes.get(principal)
    tenants = walled if own is None else own if walled is None else own & walled
    if tenants is None:
        return Scope(principal)
    return Scope(principal or settings.kafka_username, tenants, _registered_tenants())


def _registered_tenants() -> dict[str, str]:
    """Registered agent -> its tenant, from the registry the broker signed."""
    registry = read_trusted(lambda trust: read_registry(cli_kafka(), trust))
    return {r.agent_id: r.profile.tenant for r in registry.records()}


def cli_scope() -> Scope:
    """``operator_scope()``, or the CLI's error naming why it cannot be known."""
    try:
        return operator_scope()
    except BrokerError as exc:
        raise fail(exc, "set PERMBROKER_OPERATOR_KEY_FILE to your operator key") from exc


def narrowed(scope: Scope, tenant: str | None) -> Scope:
    """``scope`` narrowed to one ``tenant`` (None: unchanged); a CLI error for a tenant the
    operator does not operate."""
    if tenant is None:
        return scope
    if scope.tenants is not None and tenant not in scope.tenants:
        raise fail(f"{scope.principal} does not operate tenant {tenant}",
                   f"your tenants: {', '.join(sorted(scope.tenants))}")
    try:
        tenant_of = scope.tenant_of if scope.tenants is not None else _registered_tenants()
    except BrokerError as exc:
        raise fail(exc, "the registry says which agents are the tenant's") from exc
    return Scope(scope.principal, frozenset({tenant}), tenant_of)


def not_theirs(scope: Scope, agent_id: str) -> str:
    """The refusal of a read about another tenant's agent (or an unregistered one)."""
    return (f"{scope.principal} operates tenants {', '.join(sorted(scope.tenants or ()))}: "
            f"agent {agent_id} is not a registered agent of theirs")
