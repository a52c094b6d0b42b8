"""The publisher's ordering rules, without Kafka: outputs acked -> state -> input offsets."""

from __future__ import annotations

import asyncio
from typing import Any

from rankstream.stream_jobs.pipeline import Result
from rankstream.stream_jobs.publisher import Publisher
from rankstream.topics import Topics

TOPICS = Topics("p")


class Journal:
    """Records every send and ack in order; sends can be made to fail a number of times."""

    def __init__(self, failures: int = 0) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.failures = failures
        self.assigned = {0, 1}

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(RuntimeError("broker down"))
        else:
            self.entries.append(("sent", topic, key))
            loop.call_soon(future.set_result, None)
        return future

    def ack(self, partition: int, offsets: Any) -> None:
        self.entries.append(("ack", partition, tuple(offsets)))


def _result(run_id: str, step: int, acks: list[tuple[int, int]]) -> Result:
    return Result(
        steps=[{"run_id": run_id, "step": step}],
        alerts=[{"run_id": run_id, "alert_id": f"a{step}"}],
        state={(acks[0][0], run_id): {"released": step}},
        ackable=acks,
    )


def _publisher(journal: Journal) -> Publisher:
    return Publisher(TOPICS, "p.stream-state", journal.send, journal.ack, journal.assigned.__contains__)


async def _publish_all(journal: Journal, results: list[Result]) -> Publisher:
    publisher = _publisher(journal)
    task = asyncio.create_task(publisher.run())
    for result in results:
        await publisher.submit(result)
    await asyncio.wait_for(publisher.join(), 30)
    task.cancel()
    return publisher


def test_outputs_then_state_then_offsets_in_submission_order() -> None:
    journal = Journal()
    asyncio.run(_publish_all(journal, [_result("r", 1, [(0, 10), (0, 11)]), _result("r", 2, [(0, 12)])]))
    assert journal.entries == [
        ("sent", TOPICS.steps, b"r"),
        ("sent", TOPICS.alerts, b"r"),
        ("sent", "p.stream-state", b"r"),
        ("ack", 0, (10, 11)),
        ("sent", TOPICS.steps, b"r"),
        ("sent", TOPICS.alerts, b"r"),
        ("sent", "p.stream-state", b"r"),
        ("ack", 0, (12,)),
    ]


def test_failed_sends_are_retried_and_nothing_is_acked_before_they_succeed() -> None:
    journal = Journal(failures=1)
    publisher = asyncio.run(_publish_all(journal, [_result("r", 1, [(1, 5)])]))
    assert publisher.stats.send_retries == 1
    assert journal.entries[-1] == ("ack", 1, (5,))
    assert [e[0] for e in journal.entries].count("ack") == 1
    assert publisher.stats.produced == 3


def test_state_and_offsets_of_a_revoked_partition_are_dropped() -> None:
    journal = Journal()
    journal.assigned.discard(1)
    publisher = asyncio.run(_publish_all(journal, [_result("r", 1, [(1, 5), (1, 6)])]))
    assert journal.entries == [("sent", TOPICS.steps, b"r"), ("sent", TOPICS.alerts, b"r")]
    assert publisher.stats.dropped_acks == 2 and publisher.stats.dropped_states == 1


def test_empty_results_are_not_queued() -> None:
    journal = Journal()
    asyncio.run(_publish_all(journal, [Result()]))
    assert journal.entries == []
