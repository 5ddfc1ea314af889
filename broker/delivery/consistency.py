"""Consistency tokens (pure): where in the grant topics an event about an agent was written.

Imports broker.errors and stdlib.

A token lists, for each grant topic an event went to, its partition and offset:
``ct1:permbroker.grants@3:1042,permbroker.grants.payments@3:77``. A view that has applied the
record at that offset of its own topic (its position is past it) has seen the event and
everything before it about that agent, because one agent's events share one partition. A view
asked ``allows(..., at_least=token)`` answers only once it is that fresh (Zanzibar's zookies).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import InvalidConsistencyToken

VERSION = "ct1"
_POSITION = re.compile(
    r"^(?P<topic>[A-Za-z0-9._-]{1,249})@(?P<partition>\d{1,6}):(?P<offset>\d{1,19})$"
)


@dataclass(frozen=True, order=True)
class Position:
    """One record of one topic partition."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ConsistencyToken:
    """The positions of the latest event about an agent, one per grant topic it went to."""

    positions: tuple[Position, ...]

    def on(self, topic: str) -> Position | None:
        """The position on ``topic``, or None when the event did not go to that topic."""
        for position in self.positions:
            if position.topic == topic:
                return position
        return None

    def encode(self) -> str:
        """The token as the string agents and resource services pass around."""
        body = ",".join(f"{p.topic}@{p.partition}:{p.offset}" for p in sorted(self.positions))
        return f"{VERSION}:{body}"

    def __str__(self) -> str:
        return self.encode()


def token_of(positions: Iterable[Position]) -> ConsistencyToken:
    """A token of the latest position per (topic, partition) among ``positions``."""
    latest: dict[tuple[str, int], Position] = {}
    for p in positions:
        key = (p.topic, p.partition)
        if key not in latest or latest[key].offset < p.offset:
            latest[key] = p
    return ConsistencyToken(tuple(sorted(latest.values())))


def parse_token(text: str) -> ConsistencyToken:
    """Parse a token; InvalidConsistencyToken says what is wrong with it."""
    version, sep, body = text.strip().partition(":")
    if version != VERSION or not sep:
        raise InvalidConsistencyToken(
            f"consistency token {text[:80]!r} does not start with {VERSION}: (was it copied whole?)"
        )
    positions = []
    for part in body.split(","):
        match = _POSITION.fullmatch(part)
        if match is None:
            raise InvalidConsistencyToken(
                f"bad position {part[:80]!r} in consistency token; expected topic@partition:offset"
            )
        positions.append(
            Position(match["topic"], int(match["partition"]), int(match["offset"]))
        )
    return token_of(positions)


def merge(*tokens: ConsistencyToken | None) -> ConsistencyToken | None:
    """The token at least as fresh as every token given (None when none is given)."""
    present = [t for t in tokens if t is not None]
    if not present:
        return None
    return token_of(p for t in present for p in t.positions)
