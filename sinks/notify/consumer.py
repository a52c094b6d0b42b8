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

from rankstream.errors import one_line

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


class TeamTopicWatch:
    """A shared notifier's subscription: the broker's topics its pattern matches, looked up every ``every_s``.

    Not kafka-python's ``subscribe(pattern=...)``: to rejoin after a new topic matched, kafka-python 3
    waits for a fresh metadata response of every topic of the cluster within one poll's timeout
    (KAFKA-3949) and gives up when the poll ends first; with the notifier's 100 ms polls on a
    broker holding thousands of topics (the test broker) a new team's topic stayed unassigned. A
    lookup here takes what it takes (one metadata request for every topic per ``every_s``), then
    the explicit topic list rejoins the group. The shared sink does the same (sinks/worker_rebalance).
    """

    def __init__(self, notifier: Notifier, every_s: float) -> None:
        self.notifier = notifier
        self.every_s = every_s
        self._next = 0.0

    def check(self, consumer: Any) -> None:
        from kafka.errors import KafkaError

        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        notifier = self.notifier
        try:
            found = notifier.subscription.matching(consumer.topics())
        except KafkaError as exc:
            log.warning("notify: listing the team topics failed (%s); trying again in %.0f s", exc, self.every_s)
            return
        if found == notifier.topics:
            return
        new = [t for t in found if t not in notifier.topics]
        notifier.topics = found
        log.info("notify: %d team alerts topic(s); new: %s", len(found), ", ".join(new[:6]) + " ..." * (len(new) > 6))
        subscribe(consumer, notifier)


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
