"""Poison input and oversized outputs on the real broker with its default message size (1 MB).

One bad event, or the widest legal run, must never stall its partition: what cannot
be published goes to the dead-letter topic with the reason and the partition flows on.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from kafka import KafkaProducer

from rankstream.config import Settings
from rankstream.dev.synthetic import generate_run
from rankstream.schema import MAX_WORLD_SIZE, dumps
from rankstream.stream_jobs.pipeline import Result
from rankstream.stream_jobs.publisher import Publisher
from tests.integration.streamkit import WorkerProcess, collect, wait_committed

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _event(run_id: str, kind: str, seq: int, ts: float, world_size: int, step: int = 0) -> dict:
    event = {
        "v": 1,
        "kind": kind,
        "run_id": run_id,
        "inc": "a1",
        "rank": 0,
        "world_size": world_size,
        "host": "h0",
        "step": step,
        "ts": ts,
        "seq": seq,
        "metrics": {"loss": 2.0 - step / 1000, "step_time_s": 0.01} if kind == "step" else {},
        "tags": {},
    }
    if kind == "run_start":
        event["meta"] = {"run_name": run_id, "team": "t"}
    return event


def _produce_to_partition_zero(settings: Settings, events: list[dict]) -> None:
    producer = KafkaProducer(linger_ms=5, **settings.kafka_python_kwargs())
    for event in events:
        producer.send(settings.topics.events, key=event["run_id"].encode(), value=dumps(event), partition=0)
    producer.flush(60)
    producer.close()


def test_a_poison_event_and_the_widest_legal_run_do_not_stall_their_partition(kafka: Settings, tmp_path: Path) -> None:
    now = time.time()
    poison = _event("poison", "step", 0, now, world_size=1 << 20, step=1)
    wide_steps = 110  # rank 0 alone, 100 steps ahead: the first ten steps go out partial, 65,535 ranks missing
    wide = [_event("wide", "run_start", 0, now, MAX_WORLD_SIZE)] + [
        _event("wide", "step", i + 1, now + i * 0.01, MAX_WORLD_SIZE, step=i) for i in range(wide_steps)
    ]
    after = generate_run("after", world_size=2, steps=20, seed=3, start_ts=now, step_time_s=0.01)
    events = [poison, *wide, *after]
    _produce_to_partition_zero(kafka, events)  # one partition: everything queues behind the poison
    worker = WorkerProcess(kafka, tmp_path / "worker.log", group="poison")
    try:
        after_steps = sum(1 for e in after if e["kind"] == "step") // 2

        def done(records: list[dict]) -> bool:
            have = {(r["run_id"], r["step"]) for r in records}
            return {("after", s) for s in range(after_steps)} <= have and ("wide", 9) in have

        steps = collect(kafka, kafka.topics.steps, done, 120)
        letters = collect(kafka, kafka.topics.dlq, lambda r: len(r) >= 1, 30)
        # every input is eventually acked: the wide run's held steps by the wall-clock fallback
        committed = wait_committed(kafka, "poison", kafka.topics.events, len(events), 150)
    finally:
        assert worker.stop() == 0, worker.log()
    got = {(s["run_id"], s["step"]) for s in steps}
    assert {("after", s) for s in range(after_steps)} <= got, worker.log()
    wide_out = [s for s in steps if s["run_id"] == "wide"]
    assert wide_out and all(len(s["missing_ranks"]) == MAX_WORLD_SIZE - 1 for s in wide_out)
    assert all(len(dumps(s)) < 1_000_000 for s in wide_out)
    [letter] = [x for x in letters if x.get("offset") == 0]
    assert f"'world_size' must be <= {MAX_WORLD_SIZE}" in letter["reason"]
    assert committed == len(events)
    assert "too large" not in worker.log() and "failed for" not in worker.log(), worker.log()


def test_a_record_the_broker_refuses_as_too_large_is_dead_lettered_not_retried(kafka: Settings) -> None:
    """The broker's own refusal (the size pre-check raised to 8 MB here): dead-lettered once, the rest flows."""
    acked: list[tuple[int, list[int]]] = []

    async def scenario() -> Publisher:
        producer = AIOKafkaProducer(max_request_size=8 << 20, acks="all", **kafka.aiokafka_kwargs())
        await producer.start()
        try:

            async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None):
                return await producer.send(topic, value, key=key, partition=partition)

            publisher = Publisher(
                kafka.topics,
                f"{kafka.topic_prefix}.stream-state",
                send,
                lambda p, offsets: acked.append((p, list(offsets))),
                lambda p: True,
                max_record_bytes=8 << 20,
                give_up_after_s=60,
            )
            big = {"run_id": "r", "step": 1, "missing_ranks": list(range(400_000))}  # ~2.7 MB
            small = {"run_id": "r", "step": 2}
            await asyncio.wait_for(publisher.publish(Result(steps=[big, small], ackable=[(0, 5)])), 60)
            return publisher
        finally:
            await producer.stop()

    publisher = asyncio.run(scenario())
    assert acked == [(0, [5])]
    assert publisher.stats.dead_lettered == 1 and publisher.stats.send_retries == 0
    steps = collect(kafka, kafka.topics.steps, lambda r: any(s["step"] == 2 for s in r), 30)
    assert [s["step"] for s in steps] == [2]
    letters = collect(kafka, kafka.topics.dlq, lambda r: len(r) >= 1, 30)
    assert len(letters) == 1 and "refused the record for good" in letters[0]["reason"]
    assert letters[0]["source_topic"] == kafka.topics.steps and letters[0]["original_truncated"] is True
