"""Tenants (pure): qualified agent ids, the policy of each tenant, who may see which tenant.

Imports schemas, broker.policy and the stdlib; reading a tenant's bundle is the policy loader's.

A tenant is a separate customer or business unit on one broker. Its agents' ids are qualified
``<tenant>:<name>`` (``acme:fraud-agent``), so two tenants may both run a ``fraud-agent``; the
default tenant keeps bare ids (``fraud-agent``), so a single-tenant setup is unchanged. The tenant
an agent belongs to is the ``tenant`` of its registered profile, set by the operator who
registered it and never changed afterwards: nothing an agent sends in a request chooses it.
Each tenant decides under its own policy bundle (``<tenants dir>/<tenant>/``); the default
tenant under the worker's single bundle. An agent of a tenant the broker has no bundle for is
not registered at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from broker.errors import ConfigError
from broker.policy import Policy, load_policy
from schemas import topics

DEFAULT_TENANT = topics.DEFAULT_TENANT
TENANT_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
SEPARATOR = ":"
# The principals a tenants file may scope: operators and resource services.
SCOPED_KINDS = ("operator:", "service:")


def qualify(tenant: str, name: str) -> str:
    """The agent id of ``name`` in ``tenant``: bare in the default tenant."""
    return name if tenant == DEFAULT_TENANT else f"{tenant}{SEPARATOR}{name}"


def id_problem(agent_id: str, tenant: str, known: Iterable[str] | None = None) -> str | None:
    """Why ``agent_id`` may not be registered in ``tenant`` (None: it may).

    A tenant's agents carry its prefix; a default-tenant id may not start with another known
    tenant's prefix (it would take a name that tenant owns). ``known=None``: tenants unchecked.
    """
    tenants = set(known) if known is not None else None
    if tenant != DEFAULT_TENANT and not TENANT_PATTERN.match(tenant):
        return f"tenant {tenant!r} is not a valid tenant id ({TENANT_PATTERN.pattern})"
    if tenants is not None and tenant not in tenants:
        return (f"tenant {tenant!r} has no policy bundle on this broker (known: "
                f"{', '.join(sorted(tenants)) or 'none'})")
    prefix, sep, _ = agent_id.partition(SEPARATOR)
    if tenant != DEFAULT_TENANT:
        if not (sep and prefix == tenant):
            return (f"an agent of tenant {tenant} has an id qualified by its tenant "
                    f"({qualify(tenant, agent_id)}), not {agent_id}")
        return None
    if sep and tenants is not None and prefix in tenants and prefix != DEFAULT_TENANT:
        return f"agent id {agent_id} is qualified by tenant {prefix}, but the profile is default's"
    return None


def visible(operator_tenants: frozenset[str] | None, tenant: str) -> bool:
    """Whether an operator scoped to ``operator_tenants`` (None: every tenant) sees ``tenant``."""
    return operator_tenants is None or tenant in operator_tenants


def asked_tenant(operator_tenants: frozenset[str] | None, asked: str | None) -> str:
    """The tenant a read about one tenant is for: ``asked``, else the operator's one tenant
    when it is scoped to one, else the default tenant (whether it may: ``visible``)."""
    if asked is not None:
        return asked
    if operator_tenants is not None and len(operator_tenants) == 1:
        return next(iter(operator_tenants))
    return DEFAULT_TENANT


def operator_scopes(doc: object) -> dict[str, frozenset[str]]:
    """The operator tenants file: ``{"operator:<name>": ["<tenant>", ...]}``, and likewise
    ``service:<name>`` for resource services.

    An operator listed acts on and sees only its tenants, a service listed checks only its
    tenants' agents; one not listed, every tenant (a single-tenant setup needs no file).
    ValueError for anything else.
    """
    if not isinstance(doc, dict):
        raise ValueError("the operator tenants file maps operator:<name> (or service:<name>) "
                         "to a list of tenants")
    scopes: dict[str, frozenset[str]] = {}
    for principal, tenants in doc.items():
        if not (isinstance(principal, str) and principal.startswith(SCOPED_KINDS)
                and isinstance(tenants, list)
                and all(isinstance(t, str) and (t == DEFAULT_TENANT or TENANT_PATTERN.match(t))
                        for t in tenants)):
            raise ValueError(f"operator tenants: {principal!r} must be operator:<name> or "
                             "service:<name> mapped to a list of tenant ids")
        scopes[principal] = frozenset(tenants)
    return scopes


def out_of_scope(operator: str, scopes: Mapping[str, frozenset[str]], agent_id: str | None,
                 tenant: str | None) -> str | None:
    """Why ``operator`` may not act on agent ``agent_id`` of ``tenant`` (None: it may).

    A scoped operator acts only on agents of its tenants, and never on the whole broker
    (``agent_id`` None: a broker-wide command such as rotating the broker's key).
    """
    own = scopes.get(operator)
    if own is None:
        return None
    if agent_id is None:
        return (f"{operator} operates tenants {', '.join(sorted(own))} only: a broker-wide "
                "command needs an operator of every tenant")
    if tenant is None or tenant in own:
        return None
    return (f"{operator} operates tenants {', '.join(sorted(own)) or 'none'}; agent "
            f"{agent_id} is not one of theirs")


@dataclass(frozen=True)
class Tenancy:
    """The policy of each tenant: the default tenant's is the worker's single bundle."""

    default: Policy
    others: Mapping[str, Policy] = field(default_factory=dict)

    @property
    def tenants(self) -> frozenset[str]:
        """Every tenant this broker decides for."""
        return frozenset({DEFAULT_TENANT, *self.others})

    def policy(self, tenant: str) -> Policy | None:
        """The tenant's policy; None for a tenant without a bundle."""
        return self.default if tenant == DEFAULT_TENANT else self.others.get(tenant)

    def classes(self, tenant: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Agent class -> (baseline, ceiling) of the tenant's policy; none for an unknown one."""
        policy = self.policy(tenant)
        if policy is None:
            return {}
        return {name: (c.baseline, c.ceiling) for name, c in policy.classes.items()}


def declared(directory: Path | None) -> tuple[str, ...]:
    """The tenants of a tenant policies directory (none without one), sorted."""
    if directory is None:
        return ()
    try:
        names = sorted(p.name for p in directory.iterdir() if p.is_dir())
    except OSError as exc:
        raise ConfigError(f"cannot list the tenant policies in {directory}: {exc}") from exc
    return tuple(n for n in names if n != DEFAULT_TENANT and TENANT_PATTERN.match(n))


def load_tenancy(default: Policy, directory: Path | None) -> Tenancy:
    """The default policy and one bundle per subdirectory of ``directory`` (named by tenant).

    ValueError for a subdirectory whose name is not a tenant id, or one named ``default`` (the
    default tenant's bundle is the worker's policy); the loader's errors for an invalid bundle.
    """
    if directory is None:
        return Tenancy(default)
    others: dict[str, Policy] = {}
    for sub in sorted(p for p in directory.iterdir() if p.is_dir()):
        if not TENANT_PATTERN.match(sub.name) or sub.name == DEFAULT_TENANT:
            raise ValueError(f"{sub}: a tenant bundle's directory is named by its tenant id "
                             f"({TENANT_PATTERN.pattern}, not {DEFAULT_TENANT!r})")
        policy = load_policy(sub)
        # Revocation markers and records are kept for the default bundle's longest grant.
        if policy.max_grant_duration_s > default.max_grant_duration_s:
            raise ValueError(f"{sub}: its longest grant ({policy.max_grant_duration_s} s) "
                             "exceeds the default bundle's "
                             f"({default.max_grant_duration_s} s)")
        others[sub.name] = policy
    return Tenancy(default, others)
