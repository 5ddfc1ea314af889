"""The worker's consumer settings: one partition's backlog never holds up the others' records."""

from __future__ import annotations

import math
from pathlib import Path

from mode.utils.queues import FlowControlQueue

from broker.adapters.kafka.access import KafkaAccess
from broker.config import Settings
from streams.app import make_app


def test_a_whole_poll_fits_above_the_mark_where_fetching_a_partition_stops(
        tmp_path: Path) -> None:
    """faust puts a poll's records into the partitions' buffers one by one and waits when one
    is full; past 1/1.25 of a buffer it stops fetching that partition. A buffer at that mark
    plus a whole poll of one partition's records must stay below full, or a flooding agent's
    partition would stall every other partition's records of the same poll."""
    app = make_app(Settings(stack_dir=tmp_path), KafkaAccess("127.0.0.1:9092"))
    size, poll = app.conf.stream_buffer_maxsize, app.conf.broker_max_poll_records
    high = math.floor(size / FlowControlQueue.pressure_high_ratio)
    assert high + poll < size
