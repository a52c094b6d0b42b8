"""The publisher's ordering rules, without Kafka: outputs acked -> state -> input offsets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import InvalidTopicError, KafkaConnectionError, KafkaTimeoutError, MessageSizeTooLargeError

from rankstream.schema import loads
from rankstream.stream_jobs.pipeline import Result
from rankstream.stream_jobs.publisher import Publisher, PublishGaveUp, is_retriable
from rankstream.stream_jobs.state_codec import decode_state
from rankstream.topics import Topics

TOPICS = Topics("p")


class Journal:
    """Records every send and ack in order; sends can be made to fail a number of times."""

    def __init__(self, failures: int = 0, refuse: frozenset[str] = frozenset()) -> None:
        self.entries: list[tuple[Any, ...]] = []
        self.values: list[tuple[str, bytes | None]] = []
        self.failures = failures
        self.refuse = refuse  # topics whose records Kafka refuses for good
        self.assigned = {0, 1}

    async def send(self, topic: str, key: bytes | None, value: bytes | None, partition: int | None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.failures:
            self.failures -= 1
            future.set_exception(KafkaConnectionError("broker down"))
        elif topic in self.refuse:
            future.set_exception(InvalidTopicError("refused"))
        else:
            self.entries.append(("sent", topic, key))
            self.values.append((topic, value))
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


def _publisher(journal: Journal, **kwargs: Any) -> Publisher:
    return Publisher(TOPICS, "p.stream-state", journal.send, journal.ack, journal.assigned.__contains__, **kwargs)


async def _publish_all(journal: Journal, results: list[Result], **kwargs: Any) -> Publisher:
    publisher = _publisher(journal, **kwargs)
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


def _letters(journal: Journal) -> list[dict[str, Any]]:
    return [loads(value) for topic, value in journal.values if topic == TOPICS.dlq and value is not None]


def test_an_output_too_large_for_kafka_is_dead_lettered_and_the_rest_flows() -> None:
    journal = Journal()
    big = Result(
        steps=[{"run_id": "r", "step": 1, "missing_ranks": list(range(200_000))}, {"run_id": "r", "step": 2}],
        ackable=[(0, 7)],
    )
    publisher = asyncio.run(_publish_all(journal, [big, _result("r", 3, [(0, 8)])]))
    sent_steps = [v for t, v in journal.values if t == TOPICS.steps]
    assert len(sent_steps) == 2 and all(len(v or b"") < 1_000_000 for v in sent_steps)
    [letter] = _letters(journal)
    assert "too large for Kafka" in letter["reason"] and letter["source_topic"] == TOPICS.steps
    assert letter["original_truncated"] is True and letter["original_bytes"] > 1_000_000
    assert ("ack", 0, (7,)) in journal.entries and ("ack", 0, (8,)) in journal.entries
    assert publisher.stats.dead_lettered == 1 and publisher.stats.send_retries == 0


def test_a_state_too_large_for_kafka_becomes_a_tombstone_and_a_dead_letter() -> None:
    journal = Journal()
    # random-looking floats do not compress below the limit
    huge = {"liveness": [i * 1.000000123456789 for i in range(400_000)]}
    result = Result(steps=[{"run_id": "r", "step": 1}], state={(0, "r"): huge}, ackable=[(0, 1)])
    publisher = asyncio.run(_publish_all(journal, [result]))
    states = [v for t, v in journal.values if t == "p.stream-state"]
    assert states == [None]
    [letter] = _letters(journal)
    assert "detector state too large" in letter["reason"] and "starts the run afresh" in letter["reason"]
    assert journal.entries[-1] == ("ack", 0, (1,)) and publisher.stats.dead_lettered == 1


def test_a_large_state_is_compressed_and_reads_back() -> None:
    journal = Journal()
    state = {"liveness": {"last_ts": [1_800_000_000.5] * 65_536}}
    asyncio.run(_publish_all(journal, [Result(state={(0, "r"): state}, ackable=[(0, 1)])]))
    [value] = [v for t, v in journal.values if t == "p.stream-state"]
    assert value is not None and len(value) < 100_000 < len(str(state))
    assert decode_state(value) == state


def test_a_record_kafka_refuses_for_good_is_dead_lettered_not_retried() -> None:
    journal = Journal(refuse=frozenset({TOPICS.alerts}))
    publisher = asyncio.run(_publish_all(journal, [_result("r", 1, [(0, 3)])]))
    [letter] = _letters(journal)
    assert letter["reason"].startswith("Kafka refused the record for good") and letter["source_topic"] == TOPICS.alerts
    assert publisher.stats.send_retries == 0 and journal.entries[-1] == ("ack", 0, (3,))


def test_a_dead_letter_kafka_refuses_too_is_counted_lost_and_the_partition_flows() -> None:
    journal = Journal(refuse=frozenset({TOPICS.alerts, TOPICS.dlq}))
    publisher = asyncio.run(_publish_all(journal, [_result("r", 1, [(0, 3)])]))
    assert publisher.stats.lost == 1 and journal.entries[-1] == ("ack", 0, (3,))


def test_retrying_gives_up_after_its_bound_without_acking() -> None:
    journal = Journal(failures=10**9)

    async def run() -> None:
        publisher = _publisher(journal, give_up_after_s=1.0)
        await publisher.publish(_result("r", 1, [(0, 3)]))

    with pytest.raises(PublishGaveUp, match="stopping: the inputs stay uncommitted"):
        asyncio.run(asyncio.wait_for(run(), 30))
    assert not [e for e in journal.entries if e[0] == "ack"]


def test_what_is_retried() -> None:
    assert is_retriable(KafkaConnectionError()) and is_retriable(KafkaTimeoutError()) and is_retriable(OSError())
    assert not is_retriable(MessageSizeTooLargeError()) and not is_retriable(InvalidTopicError())
    assert not is_retriable(ValueError("a bug"))
