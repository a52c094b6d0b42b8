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
#: How often the consumer refreshes its metadata: with ``--team '*'`` also how soon a new team's
#: alerts topic joins the pattern subscription (then a rebalance assigns it).
METADATA_MAX_AGE_MS = 30_000


#: A poll's timeout while a pattern subscription (re)joins: see :class:`JoinPoll`.
JOIN_POLL_MS = 3_000


class JoinPoll:
    """How long to poll while a pattern subscription has to (re)join its group.

    Before joining with a pattern, kafka-python 3 refreshes the metadata of every topic on the
    broker and gives up ("returning early") when the poll's timeout ends first; with the
    notifier's 100 ms polls and a broker holding many topics it never got to join again, so a new
    team's topic stayed unassigned (seen on the test broker). While the matched topics just
    changed, or nothing is assigned, polls get :data:`JOIN_POLL_MS` instead.
    """

    def __init__(self) -> None:
        self._topics: frozenset[str] | None = None

    def timeout_ms(self, consumer: Any, usual_ms: int) -> int:
        topics = frozenset(consumer.subscription() or ())
        changed, self._topics = topics != self._topics, topics
        return max(usual_ms, JOIN_POLL_MS) if changed or not consumer.assignment() else usual_ms


def subscribe(consumer: Any, notifier: Notifier) -> None:
    """Subscribe by name (legacy, one team) or by pattern (every team's alerts topic)."""
    sub = notifier.subscription
    if sub.pattern is not None:
        consumer.subscribe(pattern=sub.pattern, listener=_Rebalance(notifier))
    else:
        consumer.subscribe(sub.topics, listener=_Rebalance(notifier))


class _SubscribedRejoin:
    """A :class:`~rankstream.sinks.rejoin.RejoinWatch` over the topics the subscription names now: a
    pattern's matched topics grow as teams appear (a new set starts a fresh watch)."""

    def __init__(self, consumer: Any, notifier: Notifier) -> None:
        self._consumer = consumer
        self._notifier = notifier
        self._topics: list[str] | None = None
        self._watch: Any = None

    def check(self, consumer: Any) -> None:
        from rankstream.sinks.rejoin import RejoinWatch

        topics = sorted(consumer.subscription() or ())
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
    from rankstream.sinks.rejoin import RejoinWatch

    if notifier.subscription.pattern is not None:
        return _SubscribedRejoin(consumer, notifier)
    return RejoinWatch(
        notifier.subscription.topics,
        lambda: subscribe(consumer, notifier),
        first_wait_s=UNASSIGNED_REJOIN_S,
        log=log,
        who="notify",
    )


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
        metadata_max_age_ms=notifier.metadata_max_age_ms,
        fetch_max_wait_ms=50,  # an alert waits at most this long in the broker before a poll returns it
        **notifier.settings.kafka_python_kwargs(),
    )
    subscribe(consumer, notifier)
    return consumer
