"""Waiting out a store (or Kafka) that is down: retries with backoff, consumption paused, one log line per change.

While a call fails, the consumer's partitions are paused and polled now and
then, so the sink stays in its group without reading more (memory stays bounded).
A rebalance during the wait hands out partitions unpaused: the rebalance listener
pauses them at once (:meth:`Retrier.keep_paused`, before anything is fetched), and
whatever a keep-alive poll still returns is not kept but rewound (``seek``) and
paused again, so an outage that spans rebalances never buffers more than before
it began. A refusal
of the rows themselves (:class:`~rankstream.sinks.rejections.Rejected`) is not
an outage and is raised at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from rankstream.errors import one_line
from rankstream.sinks.rejections import Rejected
from rankstream.sinks.rejoin import rewind_to_committed

log = logging.getLogger("rankstream.sink")

T = TypeVar("T")

MAX_BACKOFF_S = 5.0
SHUTDOWN_GRACE_S = 15.0


class Stopped(Exception):
    """Stop was requested while waiting for the store."""


class Retrier:
    """Retries calls for the worker; ``consumer`` (once it exists) is paused and kept alive meanwhile.

    ``on_outage`` is called once per failing stretch.
    """

    def __init__(self, on_outage: Callable[[], None]) -> None:
        self.consumer: Any = None
        self.stop = threading.Event()
        self._on_outage = on_outage
        self.waiting = False  # consumption is paused for a failing call
        self.rewound = 0  # messages a keep-alive poll returned and left for later (tests, logs)
        self._to_rewind: set[Any] = set()

    def rewind_after_poll(self, partitions: Any) -> None:
        """Have ``partitions`` read again from their committed offsets once the current poll returns.

        kafka-python 3 keeps the position of a partition that stays assigned across
        a rebalance, so the messages of a batch dropped on the rebalance would be
        skipped. Called from the rebalance callback, where committed offsets cannot
        be fetched: :meth:`rewound_after_poll` does it.
        """
        self._to_rewind.update(partitions)

    def rewound_after_poll(self) -> bool:
        """Seek the partitions asked for to their committed offsets (the beginning when none, as
        ``auto_offset_reset``); True when done: the records that poll returned must be dropped."""
        if not self._to_rewind or self.consumer is None:
            return False
        asked, self._to_rewind = self._to_rewind, set()
        rewound = rewind_to_committed(self.consumer, asked)
        log.info("sink: %d partition(s) rewound to their committed offsets after a dropped batch", rewound)
        return True

    def keep_paused(self, assigned: Any) -> None:
        """Pause the partitions a rebalance assigns while consumption is paused for the store (none is fetched)."""
        if self.waiting and assigned and self.consumer is not None:
            self.consumer.pause(*assigned)
            log.info(
                "sink: %d partition(s) assigned while waiting for the store; paused until it is back", len(assigned)
            )

    def with_store(self, fn: Callable[[], T], what: str, *, paused: bool = True, deadline: float | None = None) -> T:
        """Call ``fn`` until it succeeds; while it fails, consumption is paused and retried with backoff."""
        return self.retry(fn, f"store ({what})", deadline, pause=paused)

    def retry(self, fn: Callable[[], T], what: str, deadline: float | None, pause: bool = True) -> T:
        """Call ``fn`` until it succeeds; past ``deadline`` (or the shutdown grace once stopping), raise Stopped."""
        delay = 0.1
        failing_since: float | None = None
        while True:
            try:
                result = fn()
            except Exception as exc:
                if isinstance(exc, Stopped):
                    raise
                if isinstance(exc, Rejected):  # the store answers again: refused rows are not an outage
                    self._recovered(what, failing_since, pause)
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    self._on_outage()
                    log.warning(
                        "sink: %s unavailable (%s); %sretrying with backoff",
                        what,
                        one_line(exc),
                        "consumption paused, " if pause and self.consumer is not None else "",
                    )
                    if pause:
                        self.waiting = True
                        self._pause(True)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    if pause:  # the caller gives up (a rebalance, shutdown): consumption is not left paused
                        self.waiting = False
                        self._pause(False)
                    raise Stopped() from exc
                if self.stop.is_set() and deadline is None:
                    deadline = now + SHUTDOWN_GRACE_S
                self._keepalive(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self._recovered(what, failing_since, pause)
            return result

    def _recovered(self, what: str, failing_since: float | None, pause: bool) -> None:
        """After a failing stretch: one log line, and consumption resumes."""
        if failing_since is None:
            return
        log.info("sink: %s available again after %.1f s; resuming", what, time.monotonic() - failing_since)
        if pause:
            self.waiting = False
            self._pause(False)

    def _pause(self, paused: bool) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        assignment = consumer.assignment()
        if not assignment:
            return
        if paused:
            consumer.pause(*assignment)
        else:
            consumer.resume(*assignment)

    def _keepalive(self, seconds: float) -> None:
        """Wait ``seconds`` while keeping the group membership (paused partitions return nothing)."""
        if self.consumer is None:
            self.stop.wait(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            records = self.consumer.poll(timeout_ms=int(min(left, 0.5) * 1000))
            if self.rewound_after_poll():
                continue
            if records:  # only right after a rebalance reset the pause
                self._rewind(records)

    def _rewind(self, records: dict[Any, list[Any]]) -> None:
        """Leave polled ``records`` in Kafka: seek each partition back to its first one and pause again.

        Keeping them would let a store outage that spans rebalances buffer without
        bound (every rebalance unpauses); their offsets are not committed, so they
        are read again once the store is back.
        """
        for tp, batch in records.items():
            self.consumer.seek(tp, batch[0].offset)
            self.rewound += len(batch)
        self._pause(True)
        count = sum(map(len, records.values()))
        log.info("sink: %d message(s) of a new assignment left in Kafka until the store is back", count)
