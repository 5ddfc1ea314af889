"""Per-agent lanes: concurrent across keys, in order per key, acked only once handled."""

from __future__ import annotations

import asyncio

import pytest

from streams.lanes import Lanes


def test_one_keys_messages_run_in_order_and_keys_overlap() -> None:
    """Messages of one key never overlap or reorder; different keys run at the same time."""
    log: list[str] = []
    running: set[str] = set()
    overlap: list[bool] = []

    async def handle(item: tuple[str, int]) -> None:
        key, n = item
        assert key not in running  # never two of one key at once
        running.add(key)
        overlap.append(len(running) > 1)
        await asyncio.sleep(0)  # yield: let other lanes run
        await asyncio.sleep(0)
        log.append(f"{key}{n}")
        running.discard(key)

    async def main() -> list[str]:
        acked: list[str] = []
        lanes: Lanes[tuple[str, int]] = Lanes(handle, limit=8)
        for n in range(5):
            for key in ("a", "b", "c"):
                await lanes.submit(key, (key, n), lambda k=key, i=n: acked.append(f"{k}{i}"))
        await lanes.drain()
        return acked

    acked = asyncio.run(main())
    for key in "abc":
        assert [x for x in log if x[0] == key] == [f"{key}{n}" for n in range(5)]
    assert sorted(acked) == sorted(log) and len(acked) == 15
    assert any(overlap)  # keys did run concurrently


def test_a_failure_stops_its_key_acks_nothing_of_it_and_surfaces() -> None:
    """A handler error: that message and later ones of its key are never acked; drain raises."""
    acked: list[int] = []

    async def handle(item: tuple[str, int]) -> None:
        await asyncio.sleep(0)
        if item == ("a", 1):
            raise RuntimeError("boom")

    async def main() -> None:
        lanes: Lanes[tuple[str, int]] = Lanes(handle, limit=4)
        for n, key in enumerate(["a", "a", "a"]):
            await lanes.submit(key, (key, n), lambda i=n: acked.append(i))
        await lanes.drain()

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(main())
    assert acked == [0]  # 1 failed, 2 came after it on the same key: neither acked


def test_the_limit_bounds_messages_in_flight() -> None:
    """No more than ``limit`` handlers run at once (backpressure on the partition)."""
    busy = 0
    peak = 0

    async def handle(_item: int) -> None:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.001)
        busy -= 1

    async def main() -> None:
        lanes: Lanes[int] = Lanes(handle, limit=3)
        for n in range(20):
            await lanes.submit(n, n, lambda: None)
        await lanes.drain()

    asyncio.run(main())
    assert peak == 3
