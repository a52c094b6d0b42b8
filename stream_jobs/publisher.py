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

Only what can succeed later is retried (the broker or a partition leader out of
reach): a record Kafka refuses for good (too large, invalid) is dead-lettered
with the reason, and one that would exceed :data:`MAX_RECORD_BYTES` is not even
sent, so one poison output can never stall its partition (a saved state that
does not fit is replaced by a tombstone: the run starts afresh on a new owner).
Retrying is bounded too: after ``give_up_after_s`` of failures the publisher
raises :class:`PublishGaveUp`, the worker stops with that line, and a restarted
worker re-reads the uncommitted inputs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from aiokafka.errors import KafkaError, KafkaTimeoutError

from rankstream.errors import ServiceUnavailable, one_line
from rankstream.schema import dlq_record, dumps
from rankstream.stream_jobs.pipeline import Result
from rankstream.stream_jobs.state_codec import encode_state
from rankstream.topics import Topics

log = logging.getLogger("rankstream.worker")

#: One record to produce: (topic, key, value, partition or None); value None is a tombstone (an evicted run's state).
OutputRecord = tuple[str, bytes | None, bytes | None, int | None]
#: Queues a record with the producer; the returned awaitable resolves when Kafka acknowledged it.
Send = Callable[[str, bytes | None, bytes | None, int | None], Awaitable[Awaitable[object]]]
#: Marks input offsets of a partition done (Faust then commits them): (partition, offsets).
AckOffsets = Callable[[int, Iterable[int]], None]

MAX_PENDING_RESULTS = 4
MAX_RETRY_DELAY_S = 10.0
#: The largest record (key + value) sent: below the producer's max.request.size (1 MiB)
#: and Kafka's default max.message.bytes (1,048,588), with room for the batch header.
MAX_RECORD_BYTES = 1_000_000
#: How much of an output too large to publish its dead letter keeps (enough to see what it was).
LETTER_HEAD_BYTES = 4096
#: Seconds of failed retries after which the worker stops (a supervisor restarts it).
DEFAULT_GIVE_UP_AFTER_S = 900.0
#: While retrying, the "still failing" line is logged at most this often.
RETRY_LOG_EVERY_S = 60.0


class PublishGaveUp(ServiceUnavailable):
    """Kafka accepted nothing for ``give_up_after_s``: the worker stops; its inputs stay uncommitted."""


def is_retriable(exc: BaseException) -> bool:
    """Whether sending again can succeed: the broker or a leader out of reach, a delivery timeout."""
    if isinstance(exc, KafkaTimeoutError):  # aiokafka marks it final, but it is the broker being away
        return True
    if isinstance(exc, KafkaError):
        return bool(exc.retriable)
    return isinstance(exc, OSError)  # ConnectionError, TimeoutError


@dataclass
class PublisherStats:
    produced: int = 0
    send_retries: int = 0
    dropped_acks: int = 0
    dropped_states: int = 0
    #: Outputs Kafka refused for good or too large to send, dead-lettered instead.
    dead_lettered: int = 0
    #: Dead letters that Kafka refused as well: logged, then dropped.
    lost: int = 0


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
        max_record_bytes: int = MAX_RECORD_BYTES,
        give_up_after_s: float = DEFAULT_GIVE_UP_AFTER_S,
        team: str = "",
    ) -> None:
        """``team``: the team of the topics the inputs came through (a team's lane); its alerts carry it,
        whatever the run's run_start claimed or if the run_start was never seen."""
        self._topics = topics
        self._team = team
        self._state_topic = state_topic
        self._send = send
        self._ack_offsets = ack_offsets
        self._is_assigned = is_assigned
        self._queue: asyncio.Queue[tuple[Result, float]] = asyncio.Queue(max_pending)
        #: Called with the seconds from a result's submission to its publication (metrics).
        self.on_published: Callable[[float], None] | None = None
        self._max_record_bytes = max_record_bytes
        self._give_up_after_s = give_up_after_s
        self._later_letters: list[OutputRecord] = []
        self.stats = PublisherStats()

    async def submit(self, result: Result) -> None:
        """Queue ``result``; waits only while ``max_pending`` results are already queued."""
        if not result.empty():
            await self._queue.put((result, time.monotonic()))

    def pending(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        while True:
            result, submitted = await self._queue.get()
            try:
                await self.publish(result)
                if self.on_published is not None:
                    self.on_published(time.monotonic() - submitted)
            finally:
                self._queue.task_done()

    async def join(self) -> None:
        """Wait until every submitted result is published (tests, shutdown)."""
        await self._queue.join()

    async def publish(self, result: Result) -> None:
        topics = self._topics
        outputs: list[OutputRecord] = [(topics.steps, s["run_id"].encode(), dumps(s), None) for s in result.steps]
        alerts = result.alerts if not self._team else [self._of_team(a) for a in result.alerts]
        outputs += [(topics.alerts, a["run_id"].encode(), dumps(a), None) for a in alerts]
        outputs += [(topics.dlq, key, value, None) for key, value in result.dlq]
        if outputs:
            await self._deliver([self._fitting(record, "output") for record in outputs])
        # Checked after the outputs are out: a partition revoked meanwhile belongs to its new owner,
        # whose state must not be overwritten by this older one (the compacted topic keeps the last).
        states: list[OutputRecord] = []
        for (partition, run_id), state in result.state.items():
            if self._is_assigned(partition):
                states.append((self._state_topic, run_id.encode(), encode_state(state), partition))
            else:
                self.stats.dropped_states += 1
        for partition, run_id in result.evicted:  # a tombstone: compaction drops the evicted run's state
            if self._is_assigned(partition):
                states.append((self._state_topic, run_id.encode(), None, partition))
            else:
                self.stats.dropped_states += 1
        if states:
            await self._deliver([self._fitting(record, "detector state") for record in states])
        by_partition: dict[int, list[int]] = {}
        for partition, offset in result.ackable:
            by_partition.setdefault(partition, []).append(offset)
        for partition, offsets in by_partition.items():
            if self._is_assigned(partition):
                self._ack_offsets(partition, offsets)
            else:  # revoked meanwhile: its new owner re-reads these and decides
                self.stats.dropped_acks += len(offsets)

    def _of_team(self, alert: dict) -> dict:
        return alert if alert.get("team") == self._team else {**alert, "team": self._team}

    # ------------------------------------------------------------------ delivery

    def _fitting(self, record: OutputRecord, what: str) -> OutputRecord:
        """``record``, or what goes out instead when it is too large for Kafka (checked before sending)."""
        topic, key, value, partition = record
        size = len(value or b"") + len(key or b"")
        if size <= self._max_record_bytes:
            return record
        reason = f"{what} too large for Kafka: {size} bytes > {self._max_record_bytes}"
        if topic == self._state_topic:  # cannot save it: a tombstone, so no new owner resumes an older state
            reason += "; the run's saved state is dropped (a new owner of the partition starts the run afresh)"
            self._later_letters.append(self._letter(record, reason))
            return (topic, key, None, partition)
        return self._letter(record, reason)

    def _letter(self, record: OutputRecord, reason: str) -> OutputRecord:
        topic, key, value, _ = record
        self.stats.dead_lettered += 1
        log.warning("rankstream worker: %s (topic %s, key %r): dead-lettered", reason, topic, key)
        letter = dlq_record(value or b"", reason, topic, -1, -1, keep=LETTER_HEAD_BYTES)
        return (self._topics.dlq, key, letter, None)

    async def _deliver(self, records: list[OutputRecord]) -> None:
        """Send ``records`` until Kafka acknowledged each, or dead-letter the ones it refuses for good."""
        await self._produce_acked(records, letters_allowed=True)
        letters, self._later_letters = self._later_letters, []
        if letters:
            await self._produce_acked(letters, letters_allowed=False)

    async def _produce_acked(self, records: list[OutputRecord], *, letters_allowed: bool) -> None:
        """Send ``records``; retry those that failed for a reason that can pass, with backoff and a bound."""
        pending = records
        delay = 0.5
        failing_since: float | None = None
        logged_at: float | None = None
        while True:
            outcomes = await self._send_all(pending)
            retry: list[OutputRecord] = []
            letters: list[OutputRecord] = []
            last_error: BaseException | None = None
            for record, outcome in zip(pending, outcomes, strict=True):
                if outcome is None:
                    self.stats.produced += 1
                elif is_retriable(outcome):
                    retry.append(record)
                    last_error = outcome
                elif letters_allowed:
                    letters.append(self._letter(record, f"Kafka refused the record for good: {one_line(outcome)}"))
                else:
                    self.stats.lost += 1
                    log.error("rankstream worker: Kafka refused a dead letter too (%s): dropped", one_line(outcome))
            if letters:
                await self._produce_acked(letters, letters_allowed=False)
            if not retry:
                return
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            failed_for = now - failing_since
            self.stats.send_retries += 1
            error = one_line(last_error) if last_error is not None else "?"
            if failed_for >= self._give_up_after_s:
                log.error("rankstream worker: giving up publishing after %.0fs: %s", failed_for, error)
                raise PublishGaveUp(
                    f"Kafka accepted none of {len(retry)} record(s) for {failed_for:.0f} s (last error: {error}); "
                    "stopping: the inputs stay uncommitted and a restarted worker re-reads them"
                )
            if logged_at is None or now - logged_at >= RETRY_LOG_EVERY_S:
                logged_at = now
                log.warning(
                    "rankstream worker: producing %d records failed for %.0fs (%s); retrying, giving up after %.0fs",
                    len(retry),
                    failed_for,
                    error,
                    self._give_up_after_s,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY_S)
            pending = retry

    async def _send_all(self, records: list[OutputRecord]) -> list[BaseException | None]:
        """Queue every record, then wait for each: ``None`` where Kafka acknowledged it, else the error."""
        queued: list[Awaitable[object] | BaseException] = []
        for topic, key, value, partition in records:
            try:
                queued.append(await self._send(topic, key, value, partition))
            except Exception as exc:  # refused at once (too large), or the broker is away
                queued.append(exc)
                if is_retriable(exc):  # the rest would wait on the same absent broker
                    queued.extend(exc for _ in range(len(records) - len(queued)))
                    break
        waiting = [q for q in queued if not isinstance(q, BaseException)]
        acked = iter(await asyncio.gather(*waiting, return_exceptions=True))
        return [q if isinstance(q, BaseException) else _error_or_none(next(acked)) for q in queued]


def _error_or_none(outcome: object) -> BaseException | None:
    return outcome if isinstance(outcome, BaseException) else None


__all__ = ["AckOffsets", "OutputRecord", "PublishGaveUp", "Publisher", "PublisherStats", "Send", "is_retriable"]
