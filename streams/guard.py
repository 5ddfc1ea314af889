"""Every message handled so that nothing it holds stops its lane, its partition or the worker.

Imports broker.errors and streams.worker; faust never (streams/app.py wraps each agent's
handler in ``guarded``).

A handler that fails because Redis or Kafka is unavailable is retried with backoff while its
partition waits: the wait, its step and its cause show in the worker's metrics and readiness
(``WorkerContext.waits``). Any other failure is permanent for that message: it is dead-lettered
(raw bytes, origin, reason) and audited, and the next message is handled. A risk signal is
different only in failing closed: when its handler fails for good, the agent its key names is
revoked (``fail_safe``: only for a validly signed signal whose key is an agent id, in full), and
that revocation is retried, the partition waiting, until it is done: a revocation is never
skipped and never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.adapters import logs
from broker.errors import BusError, Fenced, StoreUnavailable
from streams.telemetry.figures import LAPS
from streams.worker import HANDLING, Incoming, WorkerContext

log = logging.getLogger("permbroker.worker")
Handler = Callable[[Incoming], Awaitable[None]]
FailSafe = Callable[[Incoming, str], Awaitable[None]]
MAX_BACKOFF_S = 2.0
FAIL_SAFE_BACKOFF_S = 30.0


async def guarded(ctx: WorkerContext, msg: Incoming, handle: Handler, *,
                  fail_safe: FailSafe | None = None) -> None:
    """Handle ``msg``: retried while transient, dead-lettered when not; never raises (but for
    cancellation, which hands the message to the partition's next owner)."""
    token = HANDLING.set(msg)
    laps = ctx.figures.laps(msg.topic, msg.timestamp)
    laps_token = LAPS.set(laps)
    laps.lap("queued")
    try:
        with logs.bound(origin=msg.origin, event_id=_event_id(msg), agent_id=None,
                        request_id=None, grant_id=None):  # the handler binds what it learns
            failure = await _until_done(ctx, msg, handle)
        if failure is not None:
            await ctx.dead_letter(msg, failure, "handler-failed")
            if fail_safe is not None:
                await _until_safe(ctx, msg, fail_safe, failure)
    finally:
        laps.lap("finished")
        ctx.waits.done(msg)
        LAPS.reset(laps_token)
        HANDLING.reset(token)


def _event_id(msg: Incoming) -> str | None:
    """The message's CloudEvents id (its ``ce_id`` header), bounded; None without one."""
    raw = next((v for k, v in msg.headers if k == "ce_id"), None)
    return raw[:128].decode(errors="replace") if raw else None


async def _until_done(ctx: WorkerContext, msg: Incoming, handle: Handler) -> str | None:
    """None once handled; the reason when the handler failed for good."""
    delay = 0.05
    while True:
        try:
            await handle(msg)
            return None
        except (StoreUnavailable, BusError) as exc:
            ctx.count("retries")
            ctx.waits.waiting(msg, "handler", exc)
            log.warning("%s waits (%.2fs): %s", msg.origin, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
        except Fenced as exc:
            ctx.fenced(msg, str(exc))
            return None
        except Exception as exc:  # the outermost handler of one message: it goes on
            ctx.count("handler_failed")
            log.exception("handler failed on %s; dead-lettering it", msg.origin)
            return f"handler failed: {type(exc).__name__}: {str(exc)[:300]}"


async def _until_safe(ctx: WorkerContext, msg: Incoming, fail_safe: FailSafe,
                      reason: str) -> None:
    """Run the fail-safe until it is done; the partition waits (shown) until then."""
    delay = 0.05
    while True:
        try:
            await fail_safe(msg, reason)
            return
        except Fenced as exc:
            ctx.fenced(msg, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a revocation is retried, never skipped
            ctx.count("fail_safe_retries")
            ctx.waits.waiting(msg, "fail-safe revocation", exc)
            log.critical("fail-safe revocation for %s not done, retrying in %.0fs: %s",
                         msg.origin, delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FAIL_SAFE_BACKOFF_S)
