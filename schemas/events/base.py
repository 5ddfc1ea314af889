"""The wire contract's vocabulary: id and scope patterns, limits, constrained types, WireModel.

Imports pydantic and the stdlib.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# Agent ids appear inside Redis hash tags and Kafka keys: no braces, no spaces, bounded length.
AGENT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
# namespace:resource.action, e.g. payments:accounts.freeze; '*' only where a glob is allowed.
SCOPE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,63}(\.[a-z][a-z0-9_-]{0,63})+$"
SCOPE_GLOB_PATTERN = r"^[a-z*][a-z0-9_*-]{0,31}(:[a-z0-9_*.-]{1,160})?$"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$"
# A key id: the RFC 7638 JWK thumbprint (base64url SHA-256, 43 chars) or another opaque,
# URL-safe token; never a path, a URL or anything a lookup could interpret.
KID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
B64URL_PATTERN = r"^[A-Za-z0-9_-]{1,1024}$"

MAX_SCOPES_PER_REQUEST = 32
MAX_RESOURCES_PER_REQUEST = 100
MAX_REQUESTED_DURATION_S = 7 * 24 * 3600  # a week; policies clamp far below this


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
EventId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Scope = Annotated[str, StringConstraints(pattern=SCOPE_PATTERN)]
ScopeGlob = Annotated[str, StringConstraints(pattern=SCOPE_GLOB_PATTERN)]
Resource = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\s]+$")]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Kid = Annotated[str, StringConstraints(pattern=KID_PATTERN)]
B64Url = Annotated[str, StringConstraints(pattern=B64URL_PATTERN)]
Signals = dict[Annotated[str, StringConstraints(max_length=64)], str | float | int | bool]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")]


class WireModel(BaseModel):
    """Base of every event: frozen, strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    @property
    def event_id(self) -> str:
        """The idempotency key consumers dedupe on (the CloudEvents ``id``); every event has one.

        Ids never change: records already on the topics carry them. A model that is only a part
        of events (``ModelInfo``, ``ScopeDenial``, ...) has none.
        """
        raise TypeError(f"no id for {type(self).__name__}")
