"""librdkafka's log lines routed through Python logging, one line per condition. Imports stdlib.

Every confluent-kafka client is built with ``routed(config)``: its log lines go to the
``permbroker.kafka.client`` logger instead of straight to stderr, and a connection that keeps
failing is logged once per condition (broker and message, timings stripped) rather than every
few milliseconds. The last condition seen per facility is kept so an error can name the cause
("Connection refused", "SASL authentication failed").
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping

LOGGER = logging.getLogger("permbroker.kafka.client")
_VARYING = re.compile(r"\d+ms|\(after [^)]*\)|\d+ identical|#\d+")
_KEPT = 256


class _OncePerCondition(logging.Filter):
    """Passes the first record of each condition; drops the repeats (bounded memory)."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.last: str = ""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = _VARYING.sub("", text.split("]: ", 1)[-1])
        with self._lock:
            self.last = text
            if key in self._seen:
                return False
            self._seen[key] = None
            if len(self._seen) > _KEPT:
                self._seen.popitem(last=False)
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
