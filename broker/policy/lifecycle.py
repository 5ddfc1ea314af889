"""The ``lifecycle:`` section of a policy: how long agent keys, registrations and idle agents
last. Imports policy.fields, policy.model and stdlib; time is an argument.

Every limit is optional; a policy without the section sets none::

    lifecycle:
      max_key_age: 90d        # a signature by a key older than this is refused (key-too-old)
      key_warning: 14d        # from this long before that limit the key is flagged (inventory,
                              # and the agent SDK is told, so it rotates before the refusal)
      dormant_after: 30d      # an agent with no request for this long is flagged dormant
      registration_ttl: 365d  # a registration lapses this long after it was made or renewed
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.policy.fields import At, check_fields, mapping, optional_duration
from broker.policy.model import format_duration
from broker.policy.source import LineMap

FIELDS = ("max_key_age", "key_warning", "dormant_after", "registration_ttl", "description")


@dataclass(frozen=True)
class AgentLifecycle:
    """The policy's lifecycle limits (None: no limit)."""

    max_key_age_s: int | None = None
    key_warning_s: int | None = None
    dormant_after_s: int | None = None
    registration_ttl_s: int | None = None

    def key_refused_at(self, added_at: datetime) -> datetime | None:
        """When a key added at ``added_at`` stops being accepted."""
        if self.max_key_age_s is None:
            return None
        return added_at + timedelta(seconds=self.max_key_age_s)

    def key_warned_at(self, added_at: datetime) -> datetime | None:
        """From when that key is flagged (and its agent told to rotate)."""
        refused = self.key_refused_at(added_at)
        if refused is None:
            return None
        before = self.key_warning_s if self.key_warning_s is not None \
            else (self.max_key_age_s or 0) // 5
        return refused - timedelta(seconds=before)

    def key_problem(self, added_at: datetime, at: datetime) -> str:
        """Why a key added at ``added_at`` is too old at ``at`` ('' when it is not)."""
        refused = self.key_refused_at(added_at)
        if refused is None or at < refused:
            return ""
        age = format_duration(int((at - added_at).total_seconds()))
        return (f"the key was added at {added_at.isoformat()}, {age} ago: older than the "
                f"policy's maximum key age of {format_duration(self.max_key_age_s or 0)} "
                "(lifecycle.max_key_age); the agent must rotate its key before that (the agent "
                "SDK does by default)")

    def dormant(self, last_acted: datetime | None, since: datetime, now: datetime) -> bool:
        """No request for ``dormant_after`` (counted from ``since`` if it never acted)."""
        if self.dormant_after_s is None:
            return False
        return now - (last_acted or since) >= timedelta(seconds=self.dormant_after_s)

    def registration_ends(self, renewed_at: datetime) -> datetime | None:
        """When a registration made or renewed at ``renewed_at`` lapses."""
        if self.registration_ttl_s is None:
            return None
        return renewed_at + timedelta(seconds=self.registration_ttl_s)


def parse_lifecycle(body: LineMap, at: At) -> AgentLifecycle:
    """The ``lifecycle`` section of a Policy document (no limits when absent)."""
    if "lifecycle" not in body:
        return AgentLifecycle()
    section = mapping(body, "lifecycle", at)
    check_fields(section, at, "the lifecycle section", required=(), optional=FIELDS)
    found = AgentLifecycle(*(optional_duration(section, f, at) for f in FIELDS[:4]))
    if found.key_warning_s is not None and (found.max_key_age_s is None
                                            or found.key_warning_s >= found.max_key_age_s):
        raise at.error("key_warning must be shorter than max_key_age (it is how long before "
                       "that limit the key is flagged)", section.line_of("key_warning"))
    return found
