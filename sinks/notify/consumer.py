"""The notifier's Kafka consumer: manual commits, and a rebalance that leaves nothing half-done.

kafka-python rebalances eagerly (every partition is revoked): before that the
notifier delivers what it has queued once and commits, and what could not be
delivered is read again by whoever gets the partition.
"""

from __future__ import annotations

import logging
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


#: Seconds a notifier waits without partitions before re-subscribing (rankstream.sinks.rejoin).
UNASSIGNED_REJOIN_S = 5.0


def rejoin_watch(consumer: Any, notifier: Notifier) -> Any:
    """The notifier's :class:`~rankstream.sinks.rejoin.RejoinWatch` (same subscription as :func:`make_consumer`)."""
    from rankstream.sinks.rejoin import RejoinWatch

    topic = notifier.settings.topics.alerts
    return RejoinWatch(
        [topic],
        lambda: consumer.subscribe([topic], listener=_Rebalance(notifier)),
        first_wait_s=UNASSIGNED_REJOIN_S,
        log=log,
        who="notify",
    )


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
