"""Grant routing (pure): which grant topics each lifecycle event goes to. Imports schemas.

The default topic (``permbroker.grants``, the log of record that rebuild folds) gets every
event. A routed namespace (``payments``) gets its own topic carrying only what concerns it:
grants and renewals projected to that namespace's scopes, the end of those grants (revoked,
released, expired, expiring), and every agent-level revocation (the agent may hold grants
anywhere). A baseline entitlement replaces the agent's whole baseline, so every routed topic
gets it, projected to its namespace's scopes (possibly none: the baseline there is then empty).
A ``crm:*`` scope therefore never reaches the payments topic. All topics are keyed by
agent id with the same partition count, so each keeps one agent's events in order. Once tenants
are declared, every tenant (the default one too) has topics of its own: an agent's events go to
the log of record and to its tenant's topics (``permbroker.tenant.<tenant>.grants`` and its
namespace topics); the shared namespace topics get the default tenant's projections only (no
tenant's service reads them then; they stay whole for a return to one tenant).

By default every namespace named in the policy's ceilings is routed (``routing_for``): a
resource service of any namespace an agent may ever hold finds its topic written. A configured
list replaces that default (to add namespaces or to route fewer).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.events import (
    AgentRevoked,
    BaselineEntitlement,
    GrantIssued,
    GrantRenewed,
    RoutingAnnounced,
    WireModel,
)
from schemas.topics import (
    DEFAULT_TENANT,
    GRANTS,
    carries_routing,
    for_tenant,
    grant_topic,
    namespace_of_topic,
)


def namespace_of(scope: str) -> str:
    """``payments:accounts.freeze`` -> ``payments``."""
    return scope.split(":", 1)[0]


def namespaces_of(scopes: Iterable[str]) -> frozenset[str]:
    """The namespaces a set of scopes touches."""
    return frozenset(namespace_of(s) for s in scopes)


# A namespace that can name a Kafka topic (a wildcard ceiling such as ``*:read`` names none).
_TOPIC_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def ceiling_namespaces(ceilings: Iterable[str]) -> frozenset[str]:
    """The namespaces the ceiling scopes name (``payments:accounts.*`` -> ``payments``)."""
    return frozenset(ns for ns in namespaces_of(ceilings) if _TOPIC_SAFE.fullmatch(ns))


def routing_for(configured: Iterable[str], ceilings: Iterable[str]) -> GrantRouting:
    """The configured namespaces when any are given, else every namespace of the ceilings."""
    chosen = frozenset(configured)
    return GrantRouting(chosen if chosen else ceiling_namespaces(ceilings))


@dataclass(frozen=True)
class GrantRouting:
    """The routed namespaces (empty: one default topic for everything), and the tenants that
    have grant topics of their own (none, or every declared one and the default tenant)."""

    namespaces: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()

    def topics(self) -> tuple[str, ...]:
        """Every grant topic in use: the default one, then one per routed namespace, then each
        tenant's own (its default topic, then one per routed namespace)."""
        shared = (GRANTS.name, *(grant_topic(ns).name for ns in sorted(self.namespaces)))
        return (*shared, *(for_tenant(name, t) for t in sorted(self.tenants) for name in shared))

    def announcements(self, event: RoutingAnnounced, existing: Iterable[str] = ()
                      ) -> list[tuple[str, RoutingAnnounced]]:
        """Where a worker's routing announcement goes: every namespace topic and every tenant's
        grant topic it writes, and each of ``existing`` it does not write (a namespace it does
        not route, a tenant no longer declared), all naming the routed namespaces and the
        tenants with topics of their own; on a namespace topic it does not write, without that
        topic's namespace. So a view of a topic nobody writes denies instead of replaying grants
        whose revocations go elsewhere. Nothing goes to the shared log of record."""
        stated = event.model_copy(update={"namespaces": tuple(sorted(self.namespaces)),
                                          "tenants": tuple(sorted(self.tenants))})
        written = {t for t in self.topics() if carries_routing(t)}
        pairs = [(t, stated) for t in sorted(written)]
        for topic in sorted(set(existing) - written):
            namespace = namespace_of_topic(topic)
            if namespace is not None:
                pairs.append((topic, stated.model_copy(update={"namespaces": tuple(
                    n for n in stated.namespaces if n != namespace)})))
            elif carries_routing(topic):
                pairs.append((topic, stated))
        return pairs

    def routed_topic(self, namespace: str) -> str | None:
        """The topic of ``namespace`` if it is routed."""
        return grant_topic(namespace).name if namespace in self.namespaces else None

    def route(
        self, event: WireModel, namespaces: Iterable[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> list[tuple[str, WireModel]]:
        """(topic, event) pairs for one event about an agent of ``tenant``; ``namespaces`` of
        the grant it ends, if known.

        The log of record gets every event. A tenant with topics of its own gets the event on
        its default grant topic and its namespace projections on its namespace topics; only the
        default tenant's projections also go to the shared namespace topics.
        """
        shared = self._route(event, namespaces)
        if tenant not in self.tenants:
            return shared
        own = [(for_tenant(topic, tenant), copy) for topic, copy in shared]
        # The shared namespace topics hold the default tenant's projections only: they keep
        # getting them, so that, should the tenants go, its services find every revocation there.
        kept = shared if tenant == DEFAULT_TENANT else [(GRANTS.name, event)]
        return [*kept, *own]

    def _route(
        self, event: WireModel, namespaces: Iterable[str] | None = None
    ) -> list[tuple[str, WireModel]]:
        """The shared topics' pairs. A grant-ending event whose namespaces are unknown goes to
        every routed topic (a view that never held the grant ignores it): an end is never lost,
        a scope never leaks."""
        out: list[tuple[str, WireModel]] = [(GRANTS.name, event)]
        if isinstance(event, GrantIssued | GrantRenewed):
            for ns in sorted(namespaces_of(event.scopes) & self.namespaces):
                scopes = tuple(s for s in event.scopes if namespace_of(s) == ns)
                out.append((grant_topic(ns).name, event.model_copy(update={"scopes": scopes})))
            return out
        if isinstance(event, BaselineEntitlement):
            out.extend((grant_topic(ns).name, event.model_copy(update={"scopes": tuple(
                s for s in event.scopes if namespace_of(s) == ns)}))
                for ns in sorted(self.namespaces))
            return out
        if isinstance(event, AgentRevoked) or namespaces is None:
            targets = self.namespaces
        else:
            targets = frozenset(namespaces) & self.namespaces
        out.extend((grant_topic(ns).name, event) for ns in sorted(targets))
        return out
