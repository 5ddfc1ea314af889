"""The one way the suites wait: poll a condition until it holds, or fail at a deadline.

Imports stdlib only. No test sleeps and hopes: every wait names what it waits for, and fails
naming it when the deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(pred: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               every: float = 0.02) -> T:
    """Poll ``pred()`` every ``every`` s until it returns a truthy value, and return that value.

    Raises AssertionError naming ``what`` once ``timeout`` s passed without it holding.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(every)
