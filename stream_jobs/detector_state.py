"""Detector state in the compacted ``<prefix>.stream-state`` topic: its name, creating it, reading it back.

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

from aiokafka import AIOKafkaConsumer, TopicPartition

from rankstream.config import Settings
from rankstream.errors import ServiceUnavailable
from rankstream.stream_jobs.state_codec import CorruptState, decode_state

log = logging.getLogger("rankstream.worker")

#: How long compaction keeps a tombstone (ms): a reader of the state topic must reach it within that to
#: see the state it deletes; reading a partition to its end at assignment takes seconds.
TOMBSTONE_RETENTION_MS = 3_600_000


class StateTopicUnavailable(ServiceUnavailable):
    """The state topic cannot be created because the events topic it mirrors does not exist."""


def state_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}.stream-state"


async def load_state(settings: Settings, partitions: list[int]) -> dict[tuple[int, str], dict]:
    """Read the compacted state topic's partitions to their end: the latest state per (partition, run_id).

    A tombstone (an evicted run) deletes the state written before it."""
    topic = state_topic(settings)
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
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

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
        described = admin.describe_topics([settings.topics.events])
        partitions = len(described[0]["partitions"])
        try:
            admin.create_topics(
                [
                    NewTopic(
                        state_topic(settings),
                        num_partitions=partitions,
                        replication_factor=min(3, len(admin.describe_cluster()["brokers"])),
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
    finally:
        admin.close()


__all__ = ["SavedStates", "StateTopicUnavailable", "ensure_state_topic", "load_state", "state_topic"]
