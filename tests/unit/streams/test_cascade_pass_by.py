"""The delegation cascade reads only the grant-topic records that can end a grant.

A record declaring a type that ends nothing (``grant.issued``...) is passed by unread and
counted; one declaring an ending type, no type, an unknown type or two types is read through
the decode edge, so bad bytes are still dead-lettered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.policy import load_policy
from schemas import topics
from streams.delegation import Delegations
from streams.guard import guarded
from streams.worker import Incoming, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

FRAUD = load_policy(Path(__file__).resolve().parents[3] / "policies" / "fraud")
ISSUED = b"io.permbroker.grant.issued.v1"
REVOKED = b"io.permbroker.grant.revoked.v1"


def _cascade() -> tuple[Delegations, WorkerContext, MemoryBus]:
    bus = MemoryBus()
    ctx = WorkerContext(FRAUD, MemoryGrantStore(), bus)
    ctx.ready.set()
    cascade = Delegations.__new__(Delegations)  # the pass-by needs none of its stores
    cascade.ctx = ctx
    return cascade, ctx, bus


def _garbage(headers: list[tuple[str, bytes]]) -> Incoming:
    return Incoming(topics.GRANTS.name, 0, 7, 1.7e9, b"fraud-detector-7", b"\xff not json",
                    headers)


@pytest.mark.parametrize("declared", [
    ISSUED, b"io.permbroker.grant.renewed.v1", b"io.permbroker.grant.expiring.v1",
    b"io.permbroker.agent.baseline.v1", b"io.permbroker.agent.revoked.v1"])
def test_a_record_of_a_type_that_ends_nothing_is_passed_by(declared: bytes) -> None:
    cascade, ctx, bus = _cascade()
    asyncio.run(guarded(ctx, _garbage([("ce_type", declared)]), cascade.on_grant_event))
    assert ctx.counters.get("cascade_passed_by") == 1
    assert bus.topics == {}


@pytest.mark.parametrize("headers", [
    [("ce_type", REVOKED)],
    [("ce_type", b"io.permbroker.grant.expired.v1")],
    [("ce_type", b"io.permbroker.grant.released.v1")],
    [],
    [("ce_type", b"io.permbroker.grant.issued.v9")],
    [("ce_type", ISSUED), ("ce_type", REVOKED)],
], ids=["revoked", "expired", "released", "no-type", "unknown-type", "two-types"])
def test_any_other_record_is_read_and_bad_bytes_are_dead_lettered(
        headers: list[tuple[str, bytes]]) -> None:
    cascade, ctx, bus = _cascade()
    asyncio.run(guarded(ctx, _garbage(headers), cascade.on_grant_event))
    assert "cascade_passed_by" not in ctx.counters
    assert ctx.counters.get("dead_lettered") == 1
    assert len(bus.topics[topics.DEAD_LETTER.name]) == 1
