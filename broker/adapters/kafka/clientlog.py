"""librdkafka's log lines routed through Python logging, one line per condition. Imports stdlib.

Every confluent-kafka client is built with ``routed(config)``: its log lines go to the
``permbroker.kafka.client`` logger instead of straight to stderr, and a connection that keeps
failing is logged once per condition (the message with timings and client numbers stripped)
rather than every few milliseconds; a condition still there a minute later is logged again,
with how many repeats were held back. The last line seen is kept (``last_condition``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping

LOGGER = logging.getLogger("permbroker.kafka.client")
_VARYING = re.compile(r"\d+ms|\(after [^)]*\)|\d+ identical|#\d+")
_KEPT = 256


class _OncePerCondition(logging.Filter):
    """Passes the first record of each condition, then at most one a minute (bounded memory)."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (passed, held)
        self._lock = threading.Lock()
        self._every_s = every_s
        self.last: str = ""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = _VARYING.sub("", text.split("]: ", 1)[-1])
        now = time.monotonic()
        with self._lock:
            self.last = text
            passed, held = self._seen.pop(key, (-self._every_s, 0))
            if now - passed < self._every_s:
                self._seen[key] = (passed, held + 1)
                return False
            self._seen[key] = (now, 0)
            if len(self._seen) > _KEPT:
                self._seen.popitem(last=False)
        if held:
            record.msg = f"{record.msg} (and {held} more like it)"
        return True


_FILTER = _OncePerCondition()
LOGGER.addFilter(_FILTER)


def routed(config: Mapping[str, object]) -> dict[str, object]:
    """``config`` with librdkafka's logs routed to Python logging (the ``logger`` setting)."""
    return {**config, "logger": LOGGER}


def last_condition() -> str:
    """The latest librdkafka log line of this process ("" if none yet)."""
    return _FILTER.last


def silence() -> None:
    """Keep librdkafka's lines out of this process's stderr (a CLI names the cause itself)."""
    LOGGER.propagate = False
    LOGGER.addHandler(logging.NullHandler())
