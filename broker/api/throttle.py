"""Per-credential rate limits of the HTTP API. Imports the ``limits`` library, stdlib.

Each verified principal has its own sliding window (``PERMBROKER_API_RATE_LIMIT`` requests per
``PERMBROKER_API_RATE_WINDOW_S`` seconds), held in this process: one principal over its limit
is answered 429 with Retry-After while every other principal is still served. Unauthenticated
calls never get a window (they are refused before, so they cannot fill memory).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter


class Throttle:
    """``limit`` calls per ``window_s`` seconds for each principal."""

    def __init__(self, limit: int, window_s: int) -> None:
        self._item = RateLimitItemPerSecond(limit, window_s)
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())

    def describe(self) -> str:
        """The limit in words."""
        return f"{self._item.amount} per {self._item.multiples}s"

    def retry_after(self, principal: str) -> int | None:
        """Count one call of ``principal``: None when allowed, else seconds to wait (>= 1)."""
        if self._limiter.hit(self._item, principal):
            return None
        reset = self._limiter.get_window_stats(self._item, principal).reset_time
        return max(1, math.ceil(reset - time.time()))
