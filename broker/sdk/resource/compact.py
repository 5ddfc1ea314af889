"""A grant as a view holds it: slots, exact integer times, shared strings. Imports schemas.

A view holds every active grant of its namespace, so each one costs what a decoded event
would not: no model instance, no datetime objects, no empty budget map. Strings that repeat
across grants (agent, scope, rule, key ids) are interned and their tuples shared; what says
where a grant came from (policy revision, rules, model, signing key), the same for many
grants, is one shared tuple. The event is rebuilt, exactly, only when a caller asks an
allowing verdict for its grant.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

from schemas.events import GrantIssued

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
SCAN_AT_MOST = 8  # resources matched by scanning the tuple; more get a frozenset
_SHARED_MAX = 10_000  # distinct tuples shared (scopes, rules, resources); later ones are kept
_shared: dict[tuple[str, ...], tuple[str, ...]] = {}
# (policy_revision, rules, model_version, model_digest, kid)
Origin = tuple[str, tuple[str, ...], str, str, str]
_origins: dict[Origin, Origin] = {}


def _strs(values: tuple[str, ...]) -> tuple[str, ...]:
    """``values`` as one shared tuple of interned strings."""
    if not values:
        return ()
    found = _shared.get(values)
    if found is not None:
        return found
    out = tuple(sys.intern(v) for v in values)
    if len(_shared) < _SHARED_MAX:
        _shared[out] = out
    return out


def _origin(g: GrantIssued) -> Origin:
    """Where ``g`` came from, as one shared tuple of interned strings."""
    key: Origin = (g.policy_revision, g.rules, g.model_version, g.model_digest, g.kid)
    found = _origins.get(key)
    if found is not None:
        return found
    out: Origin = (sys.intern(g.policy_revision), _strs(g.rules), sys.intern(g.model_version),
                   sys.intern(g.model_digest), sys.intern(g.kid))
    if len(_origins) < _SHARED_MAX:
        _origins[out] = out
    return out


def us(at: datetime) -> float:
    """Microseconds since the epoch as a float: exact (an integer below 2**53, until the year
    2255), smaller than an int of that size, and compared with a check's time at C speed."""
    return float((at - EPOCH) // US)


def _at(micros: float) -> datetime:
    return EPOCH + timedelta(microseconds=int(micros))


def _opt(value: str | None) -> str | None:
    return None if value is None else sys.intern(value)


class HeldGrant:
    """One active grant: what a check reads (expiry, resources, chain) and the rest to rebuild
    the event it came from."""

    __slots__ = ("agent_id", "budgets", "case_id", "delegators", "expires_us", "grant_id",
                 "issued_us", "members", "origin", "parent_grant_id", "request_id",
                 "resources", "scopes")

    def __init__(self, g: GrantIssued) -> None:
        self.grant_id = g.grant_id
        self.agent_id = sys.intern(g.agent_id)
        self.request_id = g.request_id
        self.scopes = _strs(g.scopes)
        self.resources = _strs(g.resources)
        # A check asks `resource in members`; empty: any resource.
        self.members: tuple[str, ...] | frozenset[str] = self.resources \
            if len(self.resources) <= SCAN_AT_MOST else frozenset(self.resources)
        self.issued_us = us(g.issued_at)
        self.expires_us = us(g.expires_at)  # a check compares its own time in us with it
        self.origin = _origin(g)
        self.budgets = tuple(g.budgets.items()) or None
        self.case_id = _opt(g.case_id)
        self.parent_grant_id = g.parent_grant_id
        self.delegators = _strs(g.delegators)

    def extended(self, expires_at: datetime) -> HeldGrant:
        """This grant with a later expiry (renewed)."""
        out = object.__new__(HeldGrant)
        for name in HeldGrant.__slots__:
            setattr(out, name, getattr(self, name))
        out.expires_us = us(expires_at)
        return out

    @property
    def expires_at(self) -> datetime:
        """The grant's absolute expiry."""
        return _at(self.expires_us)

    def issued(self) -> GrantIssued:
        """The event this grant came from (equal to it; renewed: with its later expiry)."""
        revision, rules, model_version, model_digest, kid = self.origin
        return GrantIssued.model_construct(
            grant_id=self.grant_id, agent_id=self.agent_id, request_id=self.request_id,
            scopes=self.scopes, resources=self.resources, issued_at=_at(self.issued_us),
            expires_at=_at(self.expires_us), policy_revision=revision, rules=rules,
            model_version=model_version, model_digest=model_digest, kid=kid,
            budgets=dict(self.budgets or ()),
            case_id=self.case_id, parent_grant_id=self.parent_grant_id,
            delegators=self.delegators)
