"""The one error tree of permbroker. Imports stdlib only.

    BrokerError
    ├── ConfigError               bad settings or environment
    ├── PolicyError               a policy bundle is invalid (file, line, rule named)
    ├── WireError                 an event cannot be decoded or validated (goes to the DLQ)
    ├── StoreError
    │   ├── StoreUnavailable      Redis cannot be reached: fail closed
    │   └── StoreMisconfigured    Redis would evict live grants (maxmemory-policy)
    ├── BusError                  Kafka cannot be reached or refused a write: fail closed
    │   ├── KafkaUnreachable      nothing answers at the bootstrap servers (down, wrong address)
    │   └── KafkaRefused          Kafka refused this client's credentials (SASL user, password)
    ├── Fenced                    a newer worker owns the partition: this one writes nothing
    ├── StackError                the local Kafka/Redis stack could not be started or stopped
    ├── DecisionTimeout           no decision arrived for a request within the deadline
    ├── InvalidConsistencyToken   a consistency token cannot be parsed
    ├── AccessDenied              an enforcement point denied an action (carries the reason)
    └── IdentityError             a key, signature or token cannot be used (says which and why)
        ├── KeyFileError          a key file is missing, unreadable or too open (path named)
        ├── TokenRejected         a grant token is refused by a verifier (reason code + detail)
        └── CommandRefused        the broker refused a registry or grant command (reason given)

Adapters translate library errors into these (``raise StoreUnavailable(...) from exc``).
"""

from __future__ import annotations


class BrokerError(Exception):
    """Root of every error permbroker raises on purpose."""


class ConfigError(BrokerError):
    """Settings or environment are invalid."""


class PolicyError(BrokerError):
    """A policy bundle is invalid; names the file, line (and column) and rule, and may suggest
    a fix ("did you mean request.confidence?")."""

    def __init__(
        self, message: str, *, file: str, line: int | None = None, rule: str | None = None,
        column: int | None = None, suggestion: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.rule = rule
        self.message = message
        self.column = column if line is not None else None
        self.suggestion = suggestion
        where = f"{file}:{line}" if line is not None else file
        where += f":{self.column}" if self.column is not None else ""
        in_rule = f" (rule {rule})" if rule else ""
        hint = f"; {suggestion}" if suggestion else ""
        super().__init__(f"{where}{in_rule}: {message}{hint}")


class WireError(BrokerError):
    """An event could not be decoded or validated against the contract; ``code`` is a stable
    reason (for metrics and dead letters), the message says exactly what is wrong."""

    def __init__(self, message: str, *, code: str = "undecodable") -> None:
        self.code = code
        super().__init__(message)


class StoreError(BrokerError):
    """The grant store failed."""


class StoreUnavailable(StoreError):
    """Redis cannot be reached; elevated scopes are denied until it returns."""


class StoreRefused(StoreUnavailable):
    """Redis refused this client's login or one of its commands (its user may not): as
    unavailable for the caller, which fails closed, but the cause is the credentials."""


class StoreMisconfigured(StoreError):
    """Redis is configured in a way that could drop live grants or revocation markers."""


class BusError(BrokerError):
    """Kafka cannot be reached or refused a write."""


class KafkaUnreachable(BusError):
    """Nothing answers at Kafka's bootstrap servers: it is down, or the address is wrong."""


class KafkaRefused(BusError):
    """Kafka refused this client's credentials (its SASL user or password)."""


class KafkaNotAllowed(BusError):
    """Kafka's ACLs do not let this client's user read (or write) a topic."""


class Fenced(BrokerError):
    """A newer worker claimed this message's partition; the stale one must write nothing."""


class StackError(BrokerError):
    """The local Kafka/Redis stack could not be started, checked or stopped."""


class DecisionTimeout(BrokerError):
    """No decision arrived for a request within the deadline."""


class InvalidConsistencyToken(BrokerError):
    """A consistency token cannot be parsed (a view denies rather than guess its freshness)."""


class AccessDenied(BrokerError):
    """An enforcement point said no; ``reason`` says why (no grant, expired, stale view...)."""

    def __init__(self, reason: str, *, agent_id: str, scope: str, resource: str = "") -> None:
        self.reason = reason
        self.agent_id = agent_id
        self.scope = scope
        self.resource = resource
        super().__init__(f"{agent_id} may not use {scope} on {resource or '*'}: {reason}")


class IdentityError(BrokerError):
    """A key, signature or token cannot be used; the message says which and why (never the key)."""


class KeyFileError(IdentityError):
    """A key file is missing, unreadable or readable by others; names the path and the fix."""


class TokenRejected(IdentityError):
    """A grant token was refused; ``code`` is stable (for metrics), ``detail`` human-readable."""

    def __init__(self, code: str, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code}: {detail}")


class CommandRefused(IdentityError):
    """The broker refused a registry or grant command; the message carries its reason."""

    def __init__(self, message: str, *, rule: str = "") -> None:
        self.rule = rule
        super().__init__(message)
