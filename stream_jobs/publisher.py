"""In-order, acknowledged publishing of the pipeline's results, off the consuming path.

Why a task of its own: waiting for Kafka to acknowledge a batch's aligned steps
and then its detector state took as long as computing the batch (~9 us of ~23 us
per event on a 64-rank run), and the consumer sat idle meanwhile. The drain now
hands each result to this queue and goes on with the next batch; the publisher
keeps the order that makes a crash safe:

1. aligned steps, alerts and dead letters of a result, until Kafka acked them;
2. then its detector state records (a state says "released up to step S", so it
   must never land before those steps);
3. then the input offsets it covers are acked, so Faust commits them;

and results are published one after another, so a run's state records land in
the order they were computed (the state topic is compacted: the last one wins).
State records and acks of a partition revoked meanwhile are dropped: its new
owner re-reads those inputs, and its state must not be overwritten by an older one.
The queue is bounded: when Kafka is down the publisher retries with backoff,
the queue fills and the drain stops taking batches, so memory stays bounded
and nothing is acked that was not delivered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from rankstream.schema import dumps
from rankstream.stream_jobs.pipeline import Result
from rankstream.topics import Topics

log = logging.getLogger("rankstream.worker")

#: One record to produce: (topic, key, value, partition or None).
OutputRecord = tuple[str, bytes | None, bytes, int | None]
#: Queues a record with the producer; the returned awaitable resolves when Kafka acknowledged it.
Send = Callable[[str, bytes | None, bytes, int | None], Awaitable[Awaitable[object]]]
#: Marks input offsets of a partition done (Faust then commits them): (partition, offsets).
AckOffsets = Callable[[int, Iterable[int]], None]

MAX_PENDING_RESULTS = 4
MAX_RETRY_DELAY_S = 10.0


@dataclass
class PublisherStats:
    produced: int = 0
    send_retries: int = 0
    dropped_acks: int = 0
    dropped_states: int = 0


class Publisher:
    """Publishes results in submission order; ``run()`` is the task that does it."""

    def __init__(
        self,
        topics: Topics,
        state_topic: str,
        send: Send,
        ack_offsets: AckOffsets,
        is_assigned: Callable[[int], bool],
        *,
        max_pending: int = MAX_PENDING_RESULTS,
    ) -> None:
        self._topics = topics
        self._state_topic = state_topic
        self._send = send
        self._ack_offsets = ack_offsets
        self._is_assigned = is_assigned
        self._queue: asyncio.Queue[Result] = asyncio.Queue(max_pending)
        self.stats = PublisherStats()

    async def submit(self, result: Result) -> None:
        """Queue ``result``; waits only while ``max_pending`` results are already queued."""
        if not result.empty():
            await self._queue.put(result)

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            result = await self._queue.get()
            try:
                await self.publish(result)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every submitted result is published (tests, shutdown)."""
        await self._queue.join()

    async def publish(self, result: Result) -> None:
        topics = self._topics
        outputs: list[OutputRecord] = [(topics.steps, s["run_id"].encode(), dumps(s), None) for s in result.steps]
        outputs += [(topics.alerts, a["run_id"].encode(), dumps(a), None) for a in result.alerts]
        outputs += [(topics.dlq, key, value, None) for key, value in result.dlq]
        if outputs:
            await self._produce_acked(outputs)
        # Checked after the outputs are out: a partition revoked meanwhile belongs to its new owner,
        # whose state must not be overwritten by this older one (the compacted topic keeps the last).
        states: list[OutputRecord] = []
        for (partition, run_id), state in result.state.items():
            if self._is_assigned(partition):
                states.append((self._state_topic, run_id.encode(), dumps(state), partition))
            else:
                self.stats.dropped_states += 1
        if states:
            await self._produce_acked(states)
        by_partition: dict[int, list[int]] = {}
        for partition, offset in result.ackable:
            by_partition.setdefault(partition, []).append(offset)
        for partition, offsets in by_partition.items():
            if self._is_assigned(partition):
                self._ack_offsets(partition, offsets)
            else:  # revoked meanwhile: its new owner re-reads these and decides
                self.stats.dropped_acks += len(offsets)

    async def _produce_acked(self, records: list[OutputRecord]) -> None:
        """Send ``records`` and wait until Kafka acknowledged all of them, retrying with backoff."""
        delay = 0.5
        while True:
            try:
                futures = [await self._send(topic, key, value, partition) for topic, key, value, partition in records]
                await asyncio.gather(*futures)
                break
            except Exception as exc:  # any send failure: inputs stay unacked, retry
                self.stats.send_retries += 1
                log.warning(
                    "rankstream worker: producing %d records failed (%s); retrying in %.1fs", len(records), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY_S)
        self.stats.produced += len(records)


__all__ = ["AckOffsets", "OutputRecord", "Publisher", "PublisherStats", "Send"]
