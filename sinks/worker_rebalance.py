"""The sink's consumer: its settings, a flush before partitions go away, rejoining a group that forgot us, and the
team topics a shared sink reads.

kafka-python rebalances eagerly (every partition is revoked), but keeps the
position of a partition that stays assigned: when a batch cannot be flushed in
time it is dropped, and the new assignment is rewound to the committed offsets,
so its messages are read again, never skipped. kafka-python 3 calls the listener
on its network thread, where no commit can wait, so a batch pending at a
revocation is always dropped (:meth:`SinkWorker.flush_once`); a shared sink stores
its batch before the re-subscriptions it starts itself (:class:`TeamTopicWatch`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

from rankstream.sinks.rejoin import TopicListWatch

if TYPE_CHECKING:
    from rankstream.sinks.worker import SinkWorker

log = logging.getLogger("rankstream.sink")

#: Seconds a sink waits without partitions before re-subscribing (rankstream.sinks.rejoin).
UNASSIGNED_REJOIN_S = 10.0


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
        # Topics created after the sink joined (the compose `topics` service racing it) and partitions added
        # are picked up within this age (--topic-refresh-seconds, 30 s) instead of kafka-python's 5 min.
        metadata_max_age_ms=int(worker.topic_refresh_s * 1000),
        **worker.settings.kafka_python_kwargs(),
    )
    worker.rebalance_listener = RevokeListener(worker)
    subscribe(consumer, worker)
    return consumer


def membership_checks(worker: SinkWorker, consumer: Any) -> list[Callable[[Any], None]]:
    """What the consumer loop checks between polls: a shared sink's team topics, and rejoining a group
    that left the sink without partitions although its topics have some."""
    from rankstream.sinks.rejoin import RejoinWatch

    router = worker.router
    rejoin = RejoinWatch(
        router.topics,
        lambda: subscribe(consumer, worker),
        first_wait_s=UNASSIGNED_REJOIN_S,
        log=log,
        who="sink",
        pattern=router.pattern,
    )
    team_topics = [TeamTopicWatch(worker, worker.topic_refresh_s).check] if router.pattern else []
    return [*team_topics, rejoin.check]


def subscribe(consumer: Any, worker: SinkWorker) -> None:
    """Subscribe ``consumer`` to ``worker``'s topics (a shared sink: the team topics found so far; none yet: no
    subscription) with ``worker``'s one rebalance listener (a rebalance spanning two polls keeps its state)."""
    if worker.router.topics:
        consumer.subscribe(list(worker.router.topics), listener=worker.rebalance_listener)


class TeamTopicWatch(TopicListWatch):
    """A shared sink's subscription (:class:`~rankstream.sinks.rejoin.TopicListWatch`): the new list
    is subscribed after the pending batch is stored and committed (kafka-python 3 runs the rebalance
    listener on its IO thread, where no commit can wait: a batch pending at the revocation is dropped
    and read again)."""

    def __init__(self, worker: SinkWorker, every_s: float) -> None:
        super().__init__(every_s, log=log, who="sink")
        self.worker = worker

    def matching(self, topics: Iterable[str]) -> tuple[str, ...]:
        return self.worker.router.matching(topics)

    def subscribed(self) -> tuple[str, ...]:
        return self.worker.router.topics

    def changed(self, consumer: Any, found: tuple[str, ...], new: list[str]) -> None:
        from kafka.errors import KafkaError

        self.worker.flush()  # stored and committed here: the rebalance this starts has nothing to drop
        self.worker.router.topics = found
        log.info(
            "sink: consuming %d team topic(s); new: %s", len(found), ", ".join(new[:6]) + (" ..." * (len(new) > 6))
        )
        subscribe(consumer, self.worker)
        try:  # the join's assignment then sees every new topic's partitions (else a second rebalance follows)
            consumer.topics()
        except KafkaError:
            pass
