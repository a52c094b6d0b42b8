"""Tombstones of evicted runs: after the outputs, with the states, only for partitions still assigned."""

from __future__ import annotations

import asyncio
from typing import Any

from rankstream.stream_jobs.pipeline import Result
from rankstream.stream_jobs.publisher import Publisher
from rankstream.topics import Topics

TOPICS = Topics("p")
STATE_TOPIC = "p.stream-state"


class Journal:
    """Every send (with its value and partition) and ack, in order."""

    def __init__(self, assigned: set[int]) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.assigned = assigned

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        self.entries.append(("sent", topic, key, value, partition))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    def ack(self, partition: int, offsets: Any) -> None:
        self.entries.append(("ack", partition, tuple(offsets)))


async def _publish(journal: Journal, result: Result) -> Publisher:
    publisher = Publisher(TOPICS, STATE_TOPIC, journal.send, journal.ack, journal.assigned.__contains__)
    await publisher.publish(result)
    return publisher


def test_an_evicted_run_gets_a_tombstone_after_its_last_steps_and_before_the_acks() -> None:
    journal = Journal({0})
    result = Result(
        steps=[{"run_id": "gone", "step": 9}],
        state={(0, "live"): {"released": 3}},
        evicted={(0, "gone")},
        ackable=[(0, 40)],
    )
    asyncio.run(_publish(journal, result))
    kinds = [(e[0], e[1]) for e in journal.entries]
    assert kinds == [("sent", TOPICS.steps), ("sent", STATE_TOPIC), ("sent", STATE_TOPIC), ("ack", 0)]
    tombstones = [e for e in journal.entries if e[0] == "sent" and e[1] == STATE_TOPIC and e[3] is None]
    assert tombstones == [("sent", STATE_TOPIC, b"gone", None, 0)]  # the state's key and partition, value None


def test_no_tombstone_for_a_partition_revoked_meanwhile() -> None:
    journal = Journal({0})
    publisher = asyncio.run(_publish(journal, Result(evicted={(1, "theirs"), (0, "ours")}, ackable=[(1, 7)])))
    assert journal.entries == [("sent", STATE_TOPIC, b"ours", None, 0)]
    assert publisher.stats.dropped_states == 1 and publisher.stats.dropped_acks == 1


def test_a_result_with_only_an_eviction_is_not_empty() -> None:
    assert not Result(evicted={(0, "r")}).empty()
