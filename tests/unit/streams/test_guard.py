"""The guard around every handler (streams/guard.py) on the ports' in-memory twins.

A transient failure waits (and shows the partition waiting, with why) then succeeds; any other
failure dead-letters the message and the next one is handled; a failed risk signal runs its
fail-safe, retried until done; nothing raises out of the guard.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from broker.errors import StoreUnavailable
from broker.policy import load_policy
from schemas import topics
from schemas.events import AuditRecord
from streams.guard import guarded
from streams.worker import Incoming, WorkerContext
from tests.support.twins import MemoryBus, MemoryGrantStore

FRAUD = load_policy(Path(__file__).resolve().parents[3] / "policies" / "fraud")


def _ctx() -> tuple[WorkerContext, MemoryBus]:
    bus = MemoryBus()
    ctx = WorkerContext(FRAUD, MemoryGrantStore(), bus)
    ctx.ready.set()
    return ctx, bus


def _msg(offset: int, key: bytes | None = b"fraud-detector-7") -> Incoming:
    return Incoming(topics.RISK.name, 3, offset, 1.7e9, key, b"{}", [])


def test_a_failing_handler_is_dead_lettered_and_the_next_message_handled() -> None:
    """A bug on one message: dead-lettered with its origin and reason; the next is handled."""
    ctx, bus = _ctx()
    handled: list[int] = []

    async def handle(msg: Incoming) -> None:
        if msg.offset == 1:
            raise RecursionError("maximum recursion depth exceeded")
        handled.append(msg.offset)

    async def run() -> None:
        for n in (1, 2):
            await guarded(ctx, _msg(n), handle)

    asyncio.run(run())
    assert handled == [2]
    assert len(bus.topics.get(topics.DEAD_LETTER.name, [])) == 1
    dead = [e for e in bus.events(topics.AUDIT_RAW.name) if isinstance(e, AuditRecord)]
    assert dead[0].subject_id == f"{topics.RISK.name}/3/1"
    assert "RecursionError" in dead[0].reasons[0]
    assert ctx.counters["handler_failed"] == 1 and not ctx.waits.partitions()


def test_a_transient_failure_waits_shows_why_and_then_succeeds() -> None:
    """Redis down: the partition waits (metrics show the step and cause), nothing is dropped."""
    ctx, bus = _ctx()
    tries: list[int] = []
    seen: list[str] = []

    async def handle(msg: Incoming) -> None:
        tries.append(msg.offset)
        if len(tries) < 3:
            raise StoreUnavailable("Redis did not answer")
        seen.extend(f"{w.topic}/{w.partition} {w.step} {w.reason}"
                    for w in ctx.waits.partitions())

    asyncio.run(guarded(ctx, _msg(7), handle))
    assert tries == [7, 7, 7] and not bus.topics.get(topics.DEAD_LETTER.name, [])
    assert seen == [f"{topics.RISK.name}/3 handler StoreUnavailable"]
    assert not ctx.waits.partitions()


def test_a_failed_risk_signal_fails_closed_and_its_fail_safe_is_retried() -> None:
    """The fail-safe revocation runs after the dead letter, retried until it is done."""
    ctx, bus = _ctx()
    attempts: list[str] = []

    async def handle(_msg: Incoming) -> None:
        raise ValueError("cannot evaluate")

    async def fail_safe(msg: Incoming, reason: str) -> None:
        attempts.append(reason)
        if len(attempts) < 2:
            raise RuntimeError("revocation script failed")

    asyncio.run(guarded(ctx, _msg(9, b"fraud-detector-7\n"), handle, fail_safe=fail_safe))
    assert len(attempts) == 2 and "ValueError" in attempts[0]
    assert len(bus.topics.get(topics.DEAD_LETTER.name, [])) == 1
    dead = [e for e in bus.events(topics.AUDIT_RAW.name) if isinstance(e, AuditRecord)]
    assert dead[0].agent_id is None  # a key with a trailing newline names no agent
    assert ctx.counters["fail_safe_retries"] == 1


def test_cancellation_is_not_swallowed() -> None:
    """A lane cancelled on a rebalance hands the message on: the guard lets it through."""
    ctx, _bus = _ctx()

    async def handle(_msg: Incoming) -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(guarded(ctx, _msg(1), handle))
