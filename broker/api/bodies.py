"""Request bodies and path ids of the HTTP API: at least as strict as the events they become. L3.

Imports pydantic, fastapi, broker.identity (tenant ids) and schemas. Bodies are untrusted:
unknown fields, NaN and Infinity, booleans for numbers, numbers for text and anything longer
than its event field allows are refused (422) before a route runs, so nothing the API accepts
can fail later on the wire. Path ids carry the same patterns as the event fields they fill.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from broker.identity.tenants import TENANT_PATTERN
from schemas.events import (
    AGENT_ID_PATTERN,
    ID_PATTERN,
    MAX_REQUESTED_DURATION_S,
    MAX_RESOURCES_PER_REQUEST,
    MAX_SCOPES_PER_REQUEST,
    LabelKey,
    LabelValue,
    Resource,
    Scope,
)

MAX_SIGNALS = 32

AgentIdPath = Annotated[str, Path(pattern=AGENT_ID_PATTERN, description="An agent id")]
IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="A grant or request id")]
LabelPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]{0,127}$")]
AgentQuery = Annotated[str | None, Query(pattern=AGENT_ID_PATTERN, description="An agent id")]
TenantQuery = Annotated[str | None, Query(pattern=TENANT_PATTERN.pattern,
                                          description="A tenant id")]

Unit = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]
Duration = Annotated[int, Field(gt=0, le=MAX_REQUESTED_DURATION_S, strict=True,
                                description="Seconds (the policy may clamp it)")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
Note = Annotated[str, StringConstraints(max_length=2000)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=128)]
SignalValue = (Annotated[str, StringConstraints(max_length=256)]
               | Annotated[float, Field(strict=True)] | Annotated[int, Field(strict=True)] | bool)
Signals = Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=64)],
                         SignalValue], Field(max_length=MAX_SIGNALS)]
Token = Annotated[str, StringConstraints(max_length=4096, pattern=r"^ct1:[A-Za-z0-9._@:,-]+$")]
CheckResource = Annotated[str, StringConstraints(max_length=256, pattern=r"^[^\s]*$")]


class Body(BaseModel):
    """Request bodies are untrusted: unknown fields and non-finite numbers are refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class CheckBody(Body):
    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
    scope: Scope
    resource: CheckResource = ""
    consistency_token: Token | None = Field(None, description="answer only from a view this "
                                            "fresh")


class EscalationBody(Body):
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1, max_length=MAX_SCOPES_PER_REQUEST)]
    resources: Annotated[tuple[Resource, ...], Field(max_length=MAX_RESOURCES_PER_REQUEST)] = ()
    duration_s: Duration
    reason: Reason
    confidence: Unit
    risk_score: Unit = 0.0
    case_id: Text | None = None
    data_sensitivity: Literal["public", "internal", "confidential", "restricted"] = "internal"
    signals: Signals = Field(default_factory=dict)


class RenewalBody(Body):
    duration_s: Duration
    reason: Reason
    confidence: Unit
    risk_score: Unit = 0.0
    signals: Signals = Field(default_factory=dict)


class ReleaseBody(Body):
    reason: Note = ""


class RevokeBody(Body):
    reason: Reason


class VoteBody(Body):
    reason: Note = ""


class SelectorBody(Body):
    agent_id: Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)] | None = None
    agent_class: Text | None = None
    model_version: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    tenant: Text | None = None
    owner: Text | None = None
    case_id: Text | None = None
    labels: Annotated[dict[LabelKey, LabelValue], Field(max_length=32)] = Field(
        default_factory=dict)
    reason: Note = ""
    dry_run: Annotated[bool, Field(strict=True)] = True
