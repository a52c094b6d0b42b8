"""Evicted runs leave the compacted detector-state topic (issue 11 item 2), on the real broker.

A real ``rankstream worker`` evicts a run that ended: after the run's last steps, its saved state gets a
tombstone (same key and partition, value None), every offset of its events is committed, and the state a
fresh worker loads at assignment (``detector_state.load_state``) no longer has it, while a run still going
keeps its state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from rankstream.config import Settings
from rankstream.dev.synthetic import generate_run
from rankstream.schema import dumps
from rankstream.stream_jobs.detector_state import ensure_state_topic, load_state, state_topic
from tests.integration.streamkit import WorkerProcess, collect, produce, step_keys, wait_committed

pytestmark = pytest.mark.kafka

#: A short alignment grace: an ended run is evicted a few seconds after its last event, not 30 s.
FAST_EVICTION_RULES = "alignment: {grace_min_s: 1}\n"

#: (partition, key, value) of a state-topic record; value None is a tombstone.
StateRecord = tuple[int, str, bytes | None]


def _state_records(
    settings: Settings, done: Callable[[list[StateRecord]], bool], timeout_s: float = 90.0
) -> list[StateRecord]:
    """Read the state topic from the beginning until ``done(records)`` or the timeout."""
    consumer = KafkaConsumer(state_topic(settings), auto_offset_reset="earliest", **settings.kafka_python_kwargs())
    records: list[StateRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not done(records):
            for tp, batch in consumer.poll(timeout_ms=500).items():
                records.extend((tp.partition, r.key.decode(), r.value) for r in batch)
    finally:
        consumer.close()
    return records


def _partitions(settings: Settings) -> list[int]:
    return list(range(settings.partitions))


def test_an_evicted_run_gets_a_tombstone_and_a_fresh_worker_does_not_load_it(kafka: Settings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_EVICTION_RULES)
    gone = generate_run("gone", world_size=4, steps=20, seed=1)  # ends: evicted once its grace is over
    keep = [e for e in generate_run("keep", world_size=4, steps=20, seed=2) if e["kind"] != "run_end"]
    worker = WorkerProcess(kafka, tmp_path / "worker.log", rules=rules)
    try:
        produce(kafka, gone + keep)
        expected = {(run, s) for run in ("gone", "keep") for s in range(20)}
        steps = collect(kafka, kafka.topics.steps, lambda r: step_keys(r) >= expected, 90)
        assert step_keys(steps) >= expected, worker.log()
        records = _state_records(kafka, lambda rs: any(k == "gone" and v is None for _, k, v in rs))
        gone_records = [(p, v is None) for p, k, v in records if k == "gone"]
        assert gone_records and gone_records[-1][1], f"no tombstone for the evicted run: {worker.log()}"
        assert not gone_records[0][1]  # its state was saved first, the tombstone came after it
        assert len({p for p, _ in gone_records}) == 1  # the tombstone went to the state's partition
        assert any(k == "keep" and v is not None for _, k, v in records)
        assert not any(k == "keep" and v is None for _, k, v in records)  # a run still going is not evicted
        # the evicted run's held events were acked with its eviction: nothing is left uncommitted
        wait_committed(kafka, f"{kafka.topic_prefix}-stream", kafka.topics.events, len(gone) + len(keep))
    finally:
        worker.stop()
    loaded = asyncio.run(load_state(kafka, _partitions(kafka)))
    assert {run_id for _, run_id in loaded} == {"keep"}


def test_load_state_reads_a_tombstone_as_no_state(kafka: Settings) -> None:
    ensure_state_topic(kafka)
    producer = KafkaProducer(**kafka.kafka_python_kwargs())
    topic = state_topic(kafka)
    sends: list[tuple[str, dict | None]] = [
        ("evicted", {"n": 1}),
        ("kept", {"n": 2}),
        ("evicted", None),
        ("relaunched", {"n": 3}),
        ("relaunched", None),
        ("relaunched", {"n": 4}),
        ("never-saved", None),
    ]
    for key, value in sends:
        producer.send(topic, key=key.encode(), value=None if value is None else dumps(value), partition=1)
    producer.flush(30)
    producer.close()
    loaded = asyncio.run(load_state(kafka, _partitions(kafka)))
    assert loaded == {(1, "kept"): {"n": 2}, (1, "relaunched"): {"n": 4}}


def test_a_saved_state_no_event_asks_for_is_given_up_by_the_next_owner(kafka: Settings, tmp_path: Path) -> None:
    """A run that went quiet under a worker that stopped before evicting it: the next owner loads its state,
    and once no event asked for it within the run retention, deletes it (a tombstone) instead of keeping it
    in memory and in the topic for every owner after it."""
    orphan = [e for e in generate_run("orphan", world_size=2, steps=10, seed=3) if e["kind"] != "run_end"]
    first = WorkerProcess(kafka, tmp_path / "first.log")  # default retention: it keeps the run for an hour
    try:
        produce(kafka, orphan)
        saved = _state_records(kafka, lambda rs: any(k == "orphan" for _, k, _ in rs))
        assert any(k == "orphan" and v is not None for _, k, v in saved), first.log()
        wait_committed(kafka, f"{kafka.topic_prefix}-stream", kafka.topics.events, len(orphan))
    finally:
        first.stop()
    assert {run_id for _, run_id in asyncio.run(load_state(kafka, _partitions(kafka)))} == {"orphan"}
    rules = tmp_path / "short-retention.yaml"
    rules.write_text("alignment: {retention_s: 3}\n")
    second = WorkerProcess(kafka, tmp_path / "second.log", rules=rules)
    try:
        records = _state_records(kafka, lambda rs: any(k == "orphan" and v is None for _, k, v in rs))
        assert any(k == "orphan" and v is None for _, k, v in records), second.log()
    finally:
        second.stop()
    assert asyncio.run(load_state(kafka, _partitions(kafka))) == {}
