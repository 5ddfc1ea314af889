"""An agent's follower reads only its key's partition: the same one Kafka's Java partitioner,
aiokafka's (the worker's producer) and librdkafka's ``murmur2_random`` (bus.py) pick."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from broker.adapters.kafka.follow import key_partition

# Kafka's own test vectors for Utils.murmur2 (clients UtilsTest), as signed 32-bit ints.
JAVA = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}


@pytest.mark.parametrize("n", [1, 3, 12, 16])
def test_the_partition_of_a_key_is_the_java_partitioners(n: int) -> None:
    parts = list(range(n))
    for key, java in JAVA.items():
        assert key_partition(key, parts) == (java & 0x7FFFFFFF) % n
        assert key_partition(key, parts) == DefaultPartitioner()(key, parts, parts)
