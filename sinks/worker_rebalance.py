"""The sink's consumer: its settings, a flush before partitions go away, and rejoining a group that forgot us.

kafka-python rebalances eagerly (every partition is revoked), but keeps the
position of a partition that stays assigned: when a batch cannot be flushed in
time it is dropped, and the new assignment is rewound to the committed offsets,
so its messages are read again, never skipped.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

if TYPE_CHECKING:
    from rankstream.sinks.worker import SinkWorker

log = logging.getLogger("rankstream.sink")

UNASSIGNED_REJOIN_S = 10.0  # see RejoinWatch
MAX_REJOINS = 3


class RevokeListener(ConsumerRebalanceListener):
    def __init__(self, worker: SinkWorker) -> None:
        self.worker = worker
        self.reread = False  # a batch was dropped: rewind the next assignment

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked and not self.worker.flush_once():
            self.reread = True

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("sink: assigned %d partition(s)", len(assigned))
        if self.reread:
            self.reread = False
            self.worker.retrier.rewind_after_poll(assigned)
        self.worker.retrier.keep_paused(assigned)


def make_consumer(worker: SinkWorker) -> Any:
    """The sink's Kafka consumer (manual commits), subscribed with ``worker``'s rebalance listener."""
    from kafka import KafkaConsumer
    from kafka.record import util as record_util

    if getattr(record_util, "crc32c_c", None) is None:
        log.warning("sink: the crc32c package is missing; Kafka CRC checks run in pure Python (slow)")
    consumer = KafkaConsumer(
        group_id=worker.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=worker.max_poll_records,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=32 * 1024 * 1024,
        client_id=f"rankstream-sink-{worker.group_id}",
        check_crcs=True,
        # A crashed sink's partitions move to its restarted successor after 10 s, not the 45 s default.
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
        # Topics created after the sink joined (e.g. the compose `topics` service racing it) are
        # picked up within 30 s instead of kafka-python's 5 min metadata refresh.
        metadata_max_age_ms=30_000,
        **worker.settings.kafka_python_kwargs(),
    )
    subscribe(consumer, worker.topics(), worker)
    return consumer


def subscribe(consumer: Any, topics: tuple[str, ...], worker: SinkWorker) -> None:
    """Subscribe ``consumer`` to ``topics`` with ``worker``'s rebalance listener."""
    consumer.subscribe(list(topics), listener=RevokeListener(worker))


class RejoinWatch:
    """Re-subscribe when the group gave this sink no partition for a while although the topics have some.

    kafka-python 3 can join with metadata that lacks just-created topics, get an
    empty assignment and never rejoin (seen in CI: minutes of silence). A sink
    that is idle on purpose (more sinks than partitions) stops trying after a few attempts.
    """

    def __init__(self) -> None:
        self.rejoins = 0
        self.unassigned_since: float | None = None

    def check(self, consumer: Any, topics: tuple[str, ...], worker: SinkWorker) -> None:
        """Called between polls: rejoin when unassigned for long enough (the wait doubles each time)."""
        if consumer.assignment():
            self.rejoins = 0
            self.unassigned_since = None
            return
        now = time.monotonic()
        if self.unassigned_since is None:
            self.unassigned_since = now
            return
        wait = UNASSIGNED_REJOIN_S * 2**self.rejoins
        if self.rejoins >= MAX_REJOINS or now - self.unassigned_since < wait:
            return
        if any(consumer.partitions_for_topic(t) for t in topics):
            self.rejoins += 1
            log.warning("sink: no partitions assigned for %.0fs although the topics exist; rejoining", wait)
            consumer.unsubscribe()
            subscribe(consumer, topics, worker)
        self.unassigned_since = now
