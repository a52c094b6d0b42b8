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
from collections.abc import Callable, Sequence
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


__all__ = ["MAX_REJOINS", "RejoinWatch", "rewind_to_committed"]
