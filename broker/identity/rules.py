"""Identity rules (pure): who signed, whether the signature binds the message, who may do what.

Imports schemas and stdlib only; no crypto here (the adapters verify signatures and hand over the
claims), and time is an argument. Every check returns ``None`` or a ``Rejection`` whose stable
``code`` becomes the audit rule ``identity:<code>``, so each way an event can fail is distinct.

Time: an event is judged at the time Kafka appended it (``received_at``), never at processing
time, so a backlog does not turn valid events stale and a redelivery is judged exactly as before.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from schemas.events import (
    OPERATOR_REVOKE_KIND,
    AgentCommand,
    AgentKey,
    AgentRecord,
    ApprovalVoted,
    EscalationRequested,
    GrantCommand,
    PublicJwk,
    ReleaseRequested,
    RenewalRequested,
    RiskObserved,
    WireModel,
)
from schemas.signing import API_AUDIENCE, BROKER_AUDIENCE, OPERATOR_PREFIX


class Reason(StrEnum):
    """Why an event or command was refused; each value is a distinct audit rule."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed-signature"
    UNKNOWN_KID = "unknown-kid"
    FOREIGN_KEY = "foreign-key"  # signed by another agent's key
    FORGED = "forged"  # the signature does not verify
    TAMPERED = "tampered"  # a valid signature over other bytes, id, type or key
    STALE = "stale"  # iat outside the window around Kafka's append time
    REPLAY = "replay"  # this signature (nonce) was already used at another offset
    KEY_RETIRED = "key-retired"
    KEY_REVOKED = "key-revoked"
    UNKNOWN_AGENT = "unknown-agent"
    SUSPENDED = "agent-suspended"
    QUARANTINED = "agent-quarantined"
    DECOMMISSIONED = "agent-decommissioned"
    REGISTRATION_LAPSED = "registration-lapsed"
    KEY_TOO_OLD = "key-too-old"
    NOT_PERMITTED = "not-permitted"  # acting for another agent, or an operator action
    NOT_YOUR_GRANT = "not-your-grant"
    SELF_APPROVAL = "self-approval"  # the requesting agent voted on its own request
    MODEL_MISMATCH = "model-mismatch"
    INVALID = "invalid-command"


@dataclass(frozen=True)
class Rejection:
    """A refusal with its stable code and a sentence saying what was wrong."""

    code: Reason
    detail: str

    @property
    def rule(self) -> str:
        """The audit rule naming this refusal."""
        return f"identity:{self.code.value}"


@dataclass(frozen=True)
class Principal:
    """Who signed: an agent (its id), an operator (``operator:<name>``) or a resource service
    (``service:<name>``), and with which key."""

    id: str
    kind: Literal["agent", "operator", "service"]
    kid: str = ""

    def __str__(self) -> str:
        return f"{self.id} (key {self.kid})" if self.kid else self.id


@dataclass(frozen=True)
class MessageFacts:
    """What the signature must bind: read from the Kafka message itself."""

    ce_id: str
    ce_type: str
    key: str  # the Kafka key as text; "" when the message has none
    digest: str
    received_at: datetime


@dataclass(frozen=True)
class EventClaims:
    """The verified claims of an event signature."""

    iss: str
    aud: str
    iat: int
    jti: str
    ce_id: str
    ce_type: str
    key: str
    digest: str


@dataclass(frozen=True)
class AssertionClaims:
    """The verified claims of an API assertion (the HTTP credential of a principal)."""

    iss: str
    aud: str
    iat: int
    exp: int
    jti: str
    htm: str  # the HTTP method it was made for
    htu: str  # the path it was made for


def assertion_problem(claims: AssertionClaims, owner: str, at: datetime, *, max_life_s: int,
                      leeway_s: int, call: tuple[str, str] | None = None) -> Rejection | None:
    """The assertion was made by the key's owner, for the API, for this call (``call``: method
    and path; None when judged after the relay), and is valid at ``at``."""
    if claims.iss != owner:
        return Rejection(Reason.TAMPERED, f"assertion iss {claims.iss!r} is not the key's owner "
                         f"{owner!r}")
    if claims.aud != API_AUDIENCE:
        return Rejection(Reason.TAMPERED, f"assertion audience {claims.aud!r} is not "
                         f"{API_AUDIENCE!r}")
    if call is not None and (claims.htm, claims.htu) != (call[0].upper(), call[1]):
        return Rejection(Reason.TAMPERED, f"assertion is for {claims.htm} {claims.htu}, not "
                         f"{call[0].upper()} {call[1]}")
    if claims.exp - claims.iat > max_life_s:
        return Rejection(Reason.STALE, f"assertion lives {claims.exp - claims.iat}s; at most "
                         f"{max_life_s}s are accepted: mint short-lived assertions")
    now = at.timestamp()
    if now >= claims.exp + leeway_s:
        return Rejection(Reason.STALE, f"assertion expired at {claims.exp} ({now - claims.exp:.0f}s"
                         " ago): mint a new one for each call")
    if now < claims.iat - leeway_s:
        return Rejection(Reason.STALE, f"assertion issued in the future (iat {claims.iat}; "
                         f"clock skew allows {leeway_s}s)")
    return None


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def value_digest(value: bytes) -> str:
    """The ``digest`` claim of an event signature: base64url(SHA-256(value bytes))."""
    return b64url(hashlib.sha256(value).digest())


def thumbprint(jwk: PublicJwk) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): the kid of every permbroker key."""
    members = {"crv": jwk.crv, "kty": jwk.kty, "x": jwk.x}
    if jwk.kty == "EC":
        members["y"] = jwk.y or ""
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def is_operator(principal_id: str) -> bool:
    """Operator principals are spelled ``operator:<name>``."""
    return principal_id.startswith(OPERATOR_PREFIX)


def check_bound(claims: EventClaims, facts: MessageFacts) -> Rejection | None:
    """The claims name this very message (id, type, key, value bytes), for the broker."""
    bound = (("ce_id", claims.ce_id, facts.ce_id), ("ce_type", claims.ce_type, facts.ce_type),
             ("key", claims.key, facts.key), ("digest", claims.digest, facts.digest))
    for name, signed, actual in bound:
        if signed != actual:
            what = "value bytes" if name == "digest" else name
            return Rejection(Reason.TAMPERED, f"the signature covers another {what} "
                             f"(signed {signed[:80]!r}, message has {actual[:80]!r})"
                             if name != "digest" else "the signature covers other value bytes")
    if claims.aud != BROKER_AUDIENCE:
        return Rejection(Reason.TAMPERED, f"signature audience {claims.aud!r} is not "
                         f"{BROKER_AUDIENCE!r}")
    return None


def check_binding(
    claims: EventClaims, facts: MessageFacts, *, max_age_s: int, skew_s: int
) -> Rejection | None:
    """The claims name this very message, for the broker, signed recently enough."""
    problem = check_bound(claims, facts)
    if problem is not None:
        return problem
    appended = facts.received_at.timestamp()
    if claims.iat < appended - max_age_s:
        return Rejection(Reason.STALE, f"signed at iat {claims.iat}, {appended - claims.iat:.0f}s "
                         f"before Kafka appended it (at most {max_age_s}s allowed)")
    if claims.iat > appended + skew_s:
        return Rejection(Reason.STALE, f"signed at iat {claims.iat}, {claims.iat - appended:.0f}s "
                         f"after Kafka appended it (clock skew allows {skew_s}s)")
    return None


def key_usable(key: AgentKey, at: datetime) -> Rejection | None:
    """May a registered key sign an event appended at ``at``? Active, or retiring until then."""
    if key.status == "revoked":
        when = key.revoked_at.isoformat() if key.revoked_at else "earlier"
        return Rejection(Reason.KEY_REVOKED, f"key {key.kid} was revoked ({when})")
    if at < key.added_at:
        return Rejection(Reason.KEY_RETIRED, f"key {key.kid} was not yet registered when the "
                         f"event was appended ({at.isoformat()} < {key.added_at.isoformat()})")
    if key.not_after is not None and at >= key.not_after:
        return Rejection(Reason.KEY_RETIRED, f"key {key.kid} retired at "
                         f"{key.not_after.isoformat()} (rotation overlap over)")
    return None


def agent_usable(record: AgentRecord) -> Rejection | None:
    """A suspended, quarantined or decommissioned agent cannot act."""
    if record.status == "suspended":
        return Rejection(Reason.SUSPENDED, f"agent {record.agent_id} is suspended "
                         f"({record.reason or 'no reason given'}, by {record.changed_by})")
    if record.status == "decommissioned":
        return Rejection(Reason.DECOMMISSIONED, f"agent {record.agent_id} is decommissioned "
                         f"({record.reason or 'no reason given'}, by {record.changed_by})")
    if record.status == "quarantined":
        return Rejection(Reason.QUARANTINED, f"agent {record.agent_id} is quarantined "
                         f"({record.reason or 'no reason given'}, by {record.changed_by})")
    return None


def find_key(record: AgentRecord, kid: str) -> AgentKey | None:
    """The agent's key with this kid, if registered."""
    return next((k for k in record.keys if k.kid == kid), None)


def is_agent_request(event: WireModel | None) -> bool:
    """Requests only the agent itself may make: escalate, renew, release, obtain a token."""
    if isinstance(event, GrantCommand):
        return event.action != "revoke"
    return isinstance(event, EscalationRequested | RenewalRequested | ReleaseRequested)


def authorize_event(signer: Principal, event: WireModel) -> Rejection | None:
    """Agents act only for themselves; operator-only events need an operator's key; a service
    acts for no one (the HTTP API relays a principal's own assertion, judged as that principal).
    """
    if signer.kind == "service":
        return _not_permitted(signer, "a resource service signs its acks and usage reports; it "
                              "relays a request only with the principal's own assertion")
    if isinstance(event, GrantCommand) and event.action == "revoke":
        if signer.kind == "operator":
            return None
        return _not_permitted(signer, "revoking a grant needs operator credentials (an agent "
                              "ends its own grant early with a release)")
    if isinstance(event, EscalationRequested | RenewalRequested | ReleaseRequested | GrantCommand):
        if signer.kind == "operator":
            return _not_permitted(signer, f"only agent {event.agent_id} itself may ask for or "
                                  "about its grants (through the HTTP API too: its assertion)")
        if signer.id != event.agent_id:
            return Rejection(Reason.FOREIGN_KEY, f"signed with key {signer.kid} of agent "
                             f"{signer.id}, not of {event.agent_id}: agents act only for "
                             "themselves")
        return None
    if isinstance(event, RiskObserved):
        return _authorize_risk(signer, event)
    if isinstance(event, AgentCommand):
        return None  # registry commands have their own rules (broker.identity.registry)
    if isinstance(event, ApprovalVoted):
        return _authorize_vote(signer, event)
    return _not_permitted(signer, f"{type(event).__name__} is not an event agents send")


def _authorize_risk(signer: Principal, signal: RiskObserved) -> Rejection | None:
    if signer.kind == "operator":
        return None
    if signal.kind == OPERATOR_REVOKE_KIND:
        return _not_permitted(signer, "an operator revocation needs operator credentials")
    subject = signal.subject_agent_id
    if subject is not None and subject != signer.id:
        return _not_permitted(signer, f"a risk signal about agent {subject} can revoke it; "
                              "only that agent itself or an operator may send one")
    return None


def _authorize_vote(signer: Principal, vote: ApprovalVoted) -> Rejection | None:
    """An approver votes only as itself (operator or verifier agent), never on its own request."""
    if signer.id in (vote.agent_id, "") or vote.approver == vote.agent_id:
        return Rejection(Reason.SELF_APPROVAL, f"refused to {signer}: the requesting agent "
                         f"{vote.agent_id} can never approve its own request")
    if signer.id != vote.approver:
        return _not_permitted(signer, f"a vote in the name of {vote.approver} must be signed "
                              "by that approver's own key")
    return None


def _not_permitted(signer: Principal, why: str) -> Rejection:
    return Rejection(Reason.NOT_PERMITTED, f"refused to {signer}: {why}")


def grant_owner_problem(command: GrantCommand) -> Rejection | None:
    """An agent may release or read (obtain a token for) only its own grants."""
    owner = command.grant_agent_id or command.agent_id
    if owner != command.agent_id and command.action == "revoke":
        return Rejection(Reason.INVALID, f"a revocation names the grant's agent as agent_id "
                         f"({command.agent_id}), not another one ({owner})")
    if owner != command.agent_id:
        return Rejection(Reason.NOT_YOUR_GRANT, f"agent {command.agent_id} may obtain tokens only "
                         f"for its own grants; grant {command.grant_id} belongs to {owner}")
    return None


def retire_at(at: datetime, overlap_s: int) -> datetime:
    """When a key being replaced stops being valid."""
    return at + timedelta(seconds=overlap_s)
