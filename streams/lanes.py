"""Per-agent lanes: one partition's messages handled concurrently across keys, in order per key.

Imports asyncio only (the faust agent hands it messages; the Processor handles them).

A faust actor handles its partition one message at a time, so every Redis and Kafka round trip
of one agent's request held up every other agent of the partition. ``Lanes`` runs messages of
different keys (the key is the agent id, the partition key) concurrently, and messages of one key
strictly one after another, in offset order. Each message is acknowledged (``done``) only once
its handler returned, i.e. once its effects were written and acknowledged; faust commits an
offset only when every offset below it was acknowledged, so nothing is committed before its
effects are durable, and a crash redelivers whatever was still in flight (handlers are
idempotent). A handler that raises stops the lanes: its message is never acknowledged, no later
message of its key is handled, and the next ``submit`` (or ``drain``) raises the error, as the
one-at-a-time actor did. The worker's handler never raises (streams/guard.py dead-letters a
message that fails for good and retries one that waits for Redis or Kafka), so its lanes go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("permbroker.worker")
T = TypeVar("T")


class Lanes(Generic[T]):
    """At most ``limit`` messages in flight; per key in submission order."""

    def __init__(self, handle: Callable[[T], Awaitable[None]], *, limit: int = 64) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(limit)
        self._tails: dict[Hashable, asyncio.Task[None]] = {}
        self._failed: BaseException | None = None
        self.handled = 0

    async def submit(self, key: Hashable, item: T, done: Callable[[], object]) -> None:
        """Queue ``item`` behind the previous item of ``key``; waits while ``limit`` are busy."""
        self._raise_if_failed()
        await self._slots.acquire()
        prev = self._tails.get(key)
        task = asyncio.create_task(self._run(prev, item, done))
        self._tails[key] = task
        task.add_done_callback(lambda t: self._forget(key, t))

    async def drain(self) -> None:
        """Wait until every submitted item was handled; raise the first handler error."""
        while self._tails:
            await asyncio.wait(list(self._tails.values()))
        self._raise_if_failed()

    def cancel(self) -> None:
        """Stop whatever is in flight (unacknowledged: it is redelivered to the next owner)."""
        for task in list(self._tails.values()):
            task.cancel()

    @property
    def in_flight(self) -> int:
        """Keys with an item queued or running."""
        return len(self._tails)

    def _raise_if_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _forget(self, key: Hashable, task: asyncio.Task[None]) -> None:
        if self._tails.get(key) is task:
            del self._tails[key]

    async def _run(self, prev: asyncio.Task[None] | None, item: T,
                   done: Callable[[], object]) -> None:
        try:
            if prev is not None:
                await asyncio.wait([prev])  # its outcome is read from _failed, not raised here
            if self._failed is not None:
                return  # an earlier message failed: never handle a later one out of order
            await self._handle(item)
            done()
            self.handled += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the lanes' outermost handler: stop them, surface the error
            if self._failed is None:
                self._failed = exc
            log.exception("message handler failed; its lane stops (the message is not acked)")
        finally:
            self._slots.release()
