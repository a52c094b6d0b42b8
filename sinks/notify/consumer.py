"""The notifier's Kafka consumer: manual commits, and a rebalance that leaves nothing half-done.

kafka-python rebalances eagerly (every partition is revoked): before that the
notifier delivers what it has queued once and commits, and what could not be
delivered is read again by whoever gets the partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from kafka import ConsumerRebalanceListener

from rankstream.errors import one_line
from rankstream.sinks.rejoin import TopicListWatch

if TYPE_CHECKING:
    from rankstream.sinks.notify.worker import Notifier

log = logging.getLogger("rankstream.notify")


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def on_partitions_revoked(self, revoked: Any) -> None:
        """Runs on kafka-python's network thread: nothing here may block on the consumer, nor raise (an error
        would end the poll, and the notifier with it)."""
        if not revoked:
            return
        try:
            self.notifier.flush_all(in_rebalance=True)
        except Exception as exc:
            log.warning("notify: delivering before a rebalance failed (%s); those alerts are read again", one_line(exc))
        self.notifier.forget_uncommitted()

    def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("notify: assigned %d partition(s)", len(assigned))
        self.notifier.rewind_after_poll(assigned)


#: Seconds a notifier waits without partitions before re-subscribing (rankstream.sinks.rejoin).
UNASSIGNED_REJOIN_S = 5.0
#: How often a shared notifier (``--team '*'``) looks up the team alerts topics (a new team's joins then).
TOPIC_REFRESH_S = 30.0


def subscribe(consumer: Any, notifier: Notifier) -> None:
    """Subscribe to the notifier's topics (a shared one: the team topics found so far; none yet: no subscription)."""
    if notifier.topics:
        consumer.subscribe(list(notifier.topics), listener=_Rebalance(notifier))


class TeamTopicWatch(TopicListWatch):
    """A shared notifier's subscription (:class:`~rankstream.sinks.rejoin.TopicListWatch`): every
    team's alerts topic found so far."""

    def __init__(self, notifier: Notifier, every_s: float) -> None:
        super().__init__(every_s, log=log, who="notify")
        self.notifier = notifier

    def matching(self, topics: Iterable[str]) -> tuple[str, ...]:
        return self.notifier.subscription.matching(topics)

    def subscribed(self) -> tuple[str, ...]:
        return self.notifier.topics

    def changed(self, consumer: Any, found: tuple[str, ...], new: list[str]) -> None:
        self.notifier.topics = found
        log.info("notify: %d team alerts topic(s); new: %s", len(found), ", ".join(new[:6]) + " ..." * (len(new) > 6))
        subscribe(consumer, self.notifier)


class _SubscribedRejoin:
    """A :class:`~rankstream.sinks.rejoin.RejoinWatch` over the topics subscribed now: a shared
    notifier's grow as teams appear (a new set starts a fresh watch)."""

    def __init__(self, consumer: Any, notifier: Notifier) -> None:
        self._consumer = consumer
        self._notifier = notifier
        self._topics: tuple[str, ...] | None = None
        self._watch: Any = None

    def check(self, consumer: Any) -> None:
        from rankstream.sinks.rejoin import RejoinWatch

        topics = self._notifier.topics
        if topics != self._topics:
            self._topics = topics
            self._watch = RejoinWatch(
                topics,
                lambda: subscribe(self._consumer, self._notifier),
                first_wait_s=UNASSIGNED_REJOIN_S,
                log=log,
                who="notify",
            )
        self._watch.check(consumer)


def rejoin_watch(consumer: Any, notifier: Notifier) -> Any:
    """The notifier's rejoin watch (same subscription as :func:`make_consumer`)."""
    return _SubscribedRejoin(consumer, notifier)


def make_consumer(notifier: Notifier) -> Any:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        group_id=notifier.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a new team's alerts topic is read from its start
        max_poll_records=1000,
        client_id=f"rankstream-notify-{notifier.group_id}",
        session_timeout_ms=10_000,
        heartbeat_interval_ms=2_000,
        metadata_max_age_ms=30_000,
        fetch_max_wait_ms=50,  # an alert waits at most this long in the broker before a poll returns it
        **notifier.settings.kafka_python_kwargs(),
    )
    subscribe(consumer, notifier)
    return consumer
