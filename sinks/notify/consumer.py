"""The notifier's Kafka consumer: manual commits, and a rebalance that leaves nothing half-done.

kafka-python rebalances eagerly (every partition is revoked): before that the
notifier delivers what it has queued once and commits, and what could not be
delivered is read again by whoever gets the partition.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

if TYPE_CHECKING:
    from rankstream.sinks.notify.worker import Notifier

log = logging.getLogger("rankstream.notify")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            self.notifier.flush_all()
            self.notifier.forget_uncommitted()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("notify: assigned %d partition(s)", len(assigned))
        self.notifier.rewind_after_poll(assigned)


#: Seconds without any partition (the topic has some) before re-subscribing; doubles each time, 3 times at most.
UNASSIGNED_REJOIN_S = 5.0
MAX_REJOINS = 3


class RejoinWatch:
    """Re-subscribe when the group gave this notifier no partition for a while although the topic has some.

    kafka-python 3 can take an empty assignment (a just-created topic missing from its metadata, or a
    previous member of the group still being timed out) and not rejoin by itself: the sink's
    ``worker_rebalance.RejoinWatch`` found it first. A notifier idle on purpose (more notifiers than
    partitions) stops trying after a few attempts.
    """

    def __init__(self) -> None:
        self.rejoins = 0
        self.unassigned_since: float | None = None

    def check(self, consumer: Any, notifier: Notifier) -> None:
        if consumer.assignment():
            self.rejoins, self.unassigned_since = 0, None
            return
        now = time.monotonic()
        if self.unassigned_since is None:
            self.unassigned_since = now
            return
        wait = UNASSIGNED_REJOIN_S * 2**self.rejoins
        if self.rejoins >= MAX_REJOINS or now - self.unassigned_since < wait:
            return
        topic = notifier.settings.topics.alerts
        if consumer.partitions_for_topic(topic):
            self.rejoins += 1
            log.warning("notify: no partitions assigned for %.0fs although %s has some; rejoining", wait, topic)
            consumer.unsubscribe()
            consumer.subscribe([topic], listener=_Rebalance(notifier))
        self.unassigned_since = now


def make_consumer(notifier: Notifier) -> Any:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        group_id=notifier.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1000,
        client_id=f"rankstream-notify-{notifier.group_id}",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
        metadata_max_age_ms=30_000,
        fetch_max_wait_ms=50,  # an alert waits at most this long in the broker before a poll returns it
        **notifier.settings.kafka_python_kwargs(),
    )
    consumer.subscribe([notifier.settings.topics.alerts], listener=_Rebalance(notifier))
    return consumer
