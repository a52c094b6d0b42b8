"""Two kafka-python group quirks the sink and the notifier both work around.

Re-subscribe a consumer that the group left without partitions although its topics have some
(:class:`RejoinWatch`), and read a partition kept across a rebalance again from its committed
offset (:func:`rewind_to_committed`).

kafka-python 3 can take an empty assignment (a just-created topic missing from its metadata, or a
previous member of the group still being timed out) and never rejoin by itself: seen in CI as minutes
of silence from the sink, and from a notifier started right after another one of its group stopped.
A consumer idle on purpose (more members than partitions) stops trying after a few attempts.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

MAX_REJOINS = 3


class RejoinWatch:
    """Called between polls: re-subscribe when unassigned for ``first_wait_s`` (the wait doubles each time).

    ``pattern``: the consumer subscribes with this regular expression (``topics`` unused); the
    topics checked for partitions are the broker's topics it matches (one metadata request per check).
    """

    def __init__(
        self,
        topics: Sequence[str],
        resubscribe: Callable[[], None],
        *,
        first_wait_s: float,
        log: logging.Logger,
        who: str,
        pattern: str | None = None,
    ) -> None:
        self._topics = list(topics)
        self._pattern = re.compile(pattern) if pattern else None
        self._resubscribe = resubscribe
        self._first_wait_s = first_wait_s
        self._log = log
        self._who = who
        self.rejoins = 0
        self.unassigned_since: float | None = None

    def check(self, consumer: Any) -> None:
        if consumer.assignment():
            self.rejoins = 0
            self.unassigned_since = None
            return
        now = time.monotonic()
        if self.unassigned_since is None:
            self.unassigned_since = now
            return
        wait = self._first_wait_s * 2**self.rejoins
        if self.rejoins >= MAX_REJOINS or now - self.unassigned_since < wait:
            return
        if any(consumer.partitions_for_topic(t) for t in self._candidates(consumer)):
            self.rejoins += 1
            self._log.warning(
                "%s: no partitions assigned for %.0fs although the topics exist; rejoining", self._who, wait
            )
            consumer.unsubscribe()
            self._resubscribe()
        self.unassigned_since = now

    def _candidates(self, consumer: Any) -> list[str]:
        if self._pattern is None:
            return self._topics
        return sorted(t for t in consumer.topics() if self._pattern.match(t))


class TopicListWatch:
    """A shared consumer's subscription (``--team '*'``): the broker's topics it wants, looked up every
    ``every_s``; a change is handed to :meth:`changed`, which re-subscribes to the explicit list.

    Not kafka-python's ``subscribe(pattern=...)``: to rejoin after a new topic matched, kafka-python 3
    waits for a fresh metadata response of every topic of the cluster within one poll's timeout
    (KAFKA-3949) and gives up when the poll ends first; with 10-100 ms polls on a broker holding
    thousands of topics (the test broker) a new team's topics stayed unassigned. A lookup here takes
    what it takes (one metadata request for every topic per ``every_s``), then the explicit topic list
    rejoins the group. The sink and the notifier subclass it.
    """

    def __init__(self, every_s: float, *, log: logging.Logger, who: str) -> None:
        self.every_s = every_s
        self._next = 0.0
        self._log = log
        self._who = who

    def check(self, consumer: Any) -> None:
        from kafka.errors import KafkaError

        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        try:
            found = self.matching(consumer.topics())
        except KafkaError as exc:
            self._log.warning(
                "%s: listing the team topics failed (%s); trying again in %.0f s", self._who, exc, self.every_s
            )
            return
        current = self.subscribed()
        if found != current:
            self.changed(consumer, found, [t for t in found if t not in current])

    def matching(self, topics: Iterable[str]) -> tuple[str, ...]:
        """The topics wanted among the broker's ``topics`` (sorted)."""
        raise NotImplementedError

    def subscribed(self) -> tuple[str, ...]:
        """The topics subscribed now."""
        raise NotImplementedError

    def changed(self, consumer: Any, found: tuple[str, ...], new: list[str]) -> None:
        """Subscribe ``consumer`` to ``found`` (``new`` of them were not subscribed)."""
        raise NotImplementedError


def rewind_to_committed(consumer: Any, partitions: set[Any]) -> int:
    """Seek those of ``partitions`` still assigned to their committed offsets (the beginning when none,
    as ``auto_offset_reset``); returns how many. kafka-python 3 keeps the position of a partition that
    stays assigned across a rebalance, so what was read but not committed before it would be skipped.
    Not callable inside the rebalance callback (committed offsets cannot be fetched there)."""
    kept = partitions & set(consumer.assignment())
    for tp in kept:
        committed = consumer.committed(tp)
        if committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)
    return len(kept)


__all__ = ["MAX_REJOINS", "RejoinWatch", "TopicListWatch", "rewind_to_committed"]
