"""Detector state in the compacted ``<prefix>.stream-state`` topic: its name, creating it, reading it back.

(A shared worker keeps one per team, ``<prefix>.<team>.stream-state``: the topic of each team's lane.)

A run's state is written to the same partition number as the run's events (the
topic has the events topic's partition count), so a worker assigned events
partitions reads exactly those partitions of the state topic (docs/stream.md,
"Detector state"). An evicted run's key gets a tombstone (value None), so
compaction drops its state and the next owner of the partition does not load it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from rankstream.config import Settings
from rankstream.errors import ServiceUnavailable
from rankstream.stream_jobs.state_codec import CorruptState, decode_state
from rankstream.topics import Topics

log = logging.getLogger("rankstream.worker")

#: How long compaction keeps a tombstone (ms): a reader of the state topic must reach it within that to
#: see the state it deletes; reading a partition to its end at assignment takes seconds.
TOMBSTONE_RETENTION_MS = 3_600_000


class StateTopicUnavailable(ServiceUnavailable):
    """The state topic cannot be created because the events topic it mirrors does not exist."""


def state_topic(settings: Settings) -> str:
    return state_topic_of(settings.topics)


def state_topic_of(topics: Topics) -> str:
    """The state topic of the worker consuming ``topics.events``: ``<prefix of topics>.stream-state``."""
    return f"{topics.prefix}.stream-state"


async def load_state(
    settings: Settings, partitions: list[int], *, topic: str | None = None
) -> dict[tuple[int, str], dict]:
    """Read the compacted state topic's partitions to their end: the latest state per (partition, run_id).

    ``topic``: the state topic (default ``settings``' own). A tombstone (an evicted run) deletes the state
    written before it."""
    topic = topic or state_topic(settings)
    consumer = AIOKafkaConsumer(enable_auto_commit=False, **settings.aiokafka_kwargs())
    await consumer.start()
    states: dict[tuple[int, str], dict] = {}
    try:
        # ensure_state_topic gave the state topic the events topic's partition count
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if end[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.key is not None:
                        key = (tp.partition, record.key.decode())
                        if record.value is None:
                            states.pop(key, None)
                        else:
                            try:
                                states[key] = decode_state(record.value)
                            except (CorruptState, ValueError) as exc:  # that run starts afresh; the rest loads
                                states.pop(key, None)
                                log.warning("rankstream worker: saved state of run %s unreadable: %s", key[1], exc)
                    if record.offset + 1 >= end[tp]:
                        remaining.discard(tp)
            if not batch:
                for tp in list(remaining):
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return states


class SavedStates:
    """The saved states of a worker's assigned partitions, each handed out once: on its run's first event.

    A state no event asks for within ``ttl_s`` of loading (the longest run retention: the engine would
    have evicted the run by then) is given up, and :meth:`expired` names it for a tombstone. Such a run
    ended or went silent under a previous owner that never evicted it (a crash, a rebalance); without
    this its state stayed in this worker's memory until revocation, and in the topic for every next owner.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._states: dict[tuple[int, str], dict] = {}
        #: partition -> when its states were loaded (while some may still be untaken).
        self._loaded_at: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._states)

    def add(self, partitions: Iterable[int], states: dict[tuple[int, str], dict]) -> None:
        """The states :func:`load_state` read for ``partitions``."""
        now = self._clock()
        for partition in partitions:
            self._loaded_at[partition] = now
        self._states.update(states)

    def take(self, partition: int, run_id: str) -> dict | None:
        return self._states.pop((partition, run_id), None)

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their states are the next owner's."""
        gone = set(partitions)
        for partition in gone:
            self._loaded_at.pop(partition, None)
        for key in [k for k in self._states if k[0] in gone]:
            del self._states[key]

    def expired(self) -> set[tuple[int, str]]:
        """The (partition, run_id) of states untaken ``ttl_s`` after loading, now dropped."""
        cutoff = self._clock() - self._ttl_s
        old = {p for p, at in self._loaded_at.items() if at <= cutoff}
        if not old:
            return set()
        for partition in old:
            del self._loaded_at[partition]
        keys = {k for k in self._states if k[0] in old}
        for key in keys:
            del self._states[key]
        return keys


def ensure_state_topic(settings: Settings) -> None:
    """Create the compacted state topic with as many partitions as the events topic.

    Raises :class:`StateTopicUnavailable` (a :class:`ServiceUnavailable`) when the events topic does not exist.
    """
    from kafka import KafkaAdminClient

    from rankstream.kafka_admin import wait_for_topics

    admin = KafkaAdminClient(client_id="rankstream-worker", request_timeout_ms=15000, **settings.kafka_python_kwargs())
    try:
        existing = wait_for_topics(admin, [settings.topics.events], timeout_s=10.0)
        if state_topic(settings) in existing:
            return
        if settings.topics.events not in existing:
            raise StateTopicUnavailable(
                f"topic {settings.topics.events} does not exist: run `rankstream topics create`"
            )
        create_state_topics(admin, [settings.topics], existing)
    finally:
        admin.close()


def create_state_topics(admin: Any, lanes: Iterable[Topics], existing: Iterable[str]) -> list[Topics]:
    """Create the state topic of each of ``lanes`` (contract topics whose events topic exists) that is not in
    ``existing`` (topic names), with its events topic's partition count. Returns the lanes whose state topic
    exists now: an events topic just created may not be described yet (its lane waits for the next call).

    ``admin`` is a kafka-python ``KafkaAdminClient``: one client serves a shared worker's every team."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    from rankstream.kafka_admin import wait_for_topics

    names = set(existing)
    lanes = list(lanes)
    ready = [t for t in lanes if state_topic_of(t) in names]
    todo = [t for t in lanes if state_topic_of(t) not in names]
    if not todo:
        return ready
    partitions = {
        d["name"]: len(d["partitions"])
        for d in admin.describe_topics([t.events for t in todo])
        if not d.get("error_code") and d.get("partitions")
    }
    replication = min(3, len(admin.describe_cluster()["brokers"]))
    created: list[Topics] = []
    for topics in todo:
        if topics.events not in partitions:
            continue
        try:
            admin.create_topics(
                [
                    NewTopic(
                        state_topic_of(topics),
                        num_partitions=partitions[topics.events],
                        replication_factor=replication,
                        topic_configs={
                            "cleanup.policy": "compact",
                            "segment.ms": "600000",
                            "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
                        },
                    )
                ]
            )
        except TopicAlreadyExistsError:
            pass
        created.append(topics)
    if created:  # a lane loads state at its first assignment: the partitions must have leaders by then
        wait_for_topics(admin, [state_topic_of(t) for t in created], timeout_s=10.0)
    return ready + created


__all__ = [
    "SavedStates",
    "StateTopicUnavailable",
    "create_state_topics",
    "ensure_state_topic",
    "load_state",
    "state_topic",
    "state_topic_of",
]
