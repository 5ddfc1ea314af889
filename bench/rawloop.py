"""The reference loop: consume -> decide -> Redis write, hand-written with the worker's clients.

Imports aiokafka, redis.asyncio, broker.adapters.redis.keyspace and broker.grants (id and key
naming only).

``python -m bench.rawloop REDIS_URL IN_TOPIC OUT_TOPIC PARTITIONS``, on the Kafka the
``PERMBROKER_KAFKA_*`` settings name, as the user they name (the worker's). It reads the same
CloudEvents bytes the agent SDK writes, with the same Kafka client faust uses (aiokafka) and the
same Redis client the grant store uses (redis.asyncio), decides with one inline predicate, writes
the grant with an absolute expiry (SET PXAT) and publishes it; it awaits the acknowledgements of
one fetched batch before fetching the next (at-least-once, like a careful hand-written loop). It
skips everything else the product does (CloudEvents validation, policy, audit, idempotency), so
it is the ceiling of this stack for a Python consumer, not a rival product.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from broker.adapters.kafka.access import KafkaAccess
from broker.adapters.redis import keyspace as keys
from broker.config import Settings
from broker.grants.decide import derive_id

MAX_GRANT_MS = 20_000  # the fraud rule's max_duration


async def _start(kafka: KafkaAccess, topic: str,
                 partitions: int) -> tuple[AIOKafkaConsumer, AIOKafkaProducer]:
    consumer = AIOKafkaConsumer(**kafka.aiokafka(), enable_auto_commit=False,
                                fetch_max_wait_ms=500, auto_offset_reset="latest")
    producer = AIOKafkaProducer(**kafka.aiokafka(), acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:  # resolve the end offsets now, so nothing produced after "ready" is skipped
        await consumer.position(tp)
    return consumer, producer


async def _handle(msg: object, r: aioredis.Redis, producer: AIOKafkaProducer,
                  out_topic: str) -> asyncio.Future[object] | None:
    req = json.loads(msg.value)  # type: ignore[attr-defined]
    if not (req["confidence"] >= 0.9 and req["risk_score"] >= 0.8 and req["resources"]):
        return None
    agent = req["agent_id"]
    grant_id = derive_id("grant", req["request_id"], req["agent_id"])
    expires_ms = msg.timestamp + min(req["duration_s"] * 1000, MAX_GRANT_MS)  # type: ignore[attr-defined]
    grant = json.dumps({"grant_id": grant_id, "agent_id": agent, "scopes": req["scopes"],
                        "resources": req["resources"], "expires_ms": expires_ms}).encode()
    await r.set(keys.grant(agent, grant_id), grant, pxat=expires_ms)
    return await producer.send(out_topic, grant, key=agent.encode())


async def run(kafka: KafkaAccess, redis_url: str, in_topic: str, out_topic: str,
              partitions: int) -> None:
    """Loop until terminated."""
    r = aioredis.Redis.from_url(redis_url)
    consumer, producer = await _start(kafka, in_topic, partitions)
    print("raw loop ready", flush=True)
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            pending = []
            for records in batches.values():
                for msg in records:
                    fut = await _handle(msg, r, producer, out_topic)
                    if fut is not None:
                        pending.append(fut)
            if pending:
                await asyncio.gather(*pending)
    finally:
        await consumer.stop()
        await producer.stop()
        await r.aclose()


if __name__ == "__main__":
    asyncio.run(run(KafkaAccess.from_settings(Settings()), *sys.argv[1:4], int(sys.argv[4])))
