"""Round trips through the real broker with both client libraries the project uses."""

from __future__ import annotations

import asyncio

import pytest
from kafka import KafkaConsumer, KafkaProducer

from rankstream.config import Settings

pytestmark = pytest.mark.kafka


def test_kafka_python_produce_consume(kafka: Settings) -> None:
    producer = KafkaProducer(**kafka.kafka_python_kwargs())
    for i in range(50):
        producer.send(kafka.topics.events, key=b"run-1", value=f"m{i}".encode())
    producer.flush(30)
    producer.close()
    consumer = KafkaConsumer(
        kafka.topics.events, auto_offset_reset="earliest", consumer_timeout_ms=5000, **kafka.kafka_python_kwargs()
    )
    values = [m.value.decode() for m in consumer]
    consumer.close()
    # one key -> one partition -> order preserved
    assert values == [f"m{i}" for i in range(50)]


def test_aiokafka_group_offsets_survive_restart(kafka: Settings) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic, group = kafka.topics.steps, f"{kafka.topic_prefix}-group"

    async def scenario() -> tuple[list[int], list[int]]:
        producer = AIOKafkaProducer(**kafka.aiokafka_kwargs())
        await producer.start()
        for i in range(100):
            await producer.send(topic, key=b"k", value=str(i).encode())
        await producer.flush()
        await producer.stop()

        async def consume(limit: int) -> list[int]:
            consumer = AIOKafkaConsumer(
                topic, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest", **kafka.aiokafka_kwargs()
            )
            await consumer.start()
            seen: list[int] = []
            try:
                while len(seen) < limit:
                    batch = await consumer.getmany(timeout_ms=5000, max_records=limit - len(seen))
                    if not batch:
                        break
                    for records in batch.values():
                        seen.extend(int(r.value) for r in records)
                await consumer.commit()
            finally:
                await consumer.stop()
            return seen

        return await consume(60), await consume(1000)

    first, second = asyncio.run(scenario())
    assert first == list(range(60))
    assert second == list(range(60, 100))
