"""Bounded memory for long-running readers (pure): a map that forgets its oldest entries.

Imports the stdlib only. A watcher keeps what arrived for callers that have not asked yet, a view
remembers ended grants: neither may grow with everything the topic ever carried. ``Bounded``
holds at most ``limit`` entries and drops the oldest first (insertion order); ``evicted`` counts
what it had to drop, so a bound set too low shows in metrics instead of hiding.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Bounded(Generic[K, V]):
    """A dict of at most ``limit`` entries; putting one more drops the oldest."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a bound must be at least 1")
        self.limit = limit
        self.evicted = 0
        self._items: OrderedDict[K, V] = OrderedDict()
        # The entries, read-only and live: a hot path tests membership without a Python call.
        self.view: Mapping[K, V] = MappingProxyType(self._items)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` (as the newest entry)."""
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
            self.evicted += 1

    def get(self, key: K) -> V | None:
        """The value under ``key``, if held."""
        return self._items.get(key)

    def pop(self, key: K) -> V | None:
        """Remove and return the value under ``key``, if held."""
        return self._items.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[K]:
        """The keys, oldest first."""
        return list(self._items)

    def values(self) -> list[V]:
        """The values, oldest first."""
        return list(self._items.values())
