"""The sink worker, the consumer loop: Kafka topics -> batches -> the batch writer -> offset commits.

It polls, batches (:mod:`.pending`), hands batches to
:class:`~rankstream.sinks.writer.BatchWriter` (rows, inserts, refused rows),
sends dead letters, commits, pauses while the store is down and handles
rebalances. Guarantees:

* offsets are committed only after the batch's insert (and its dead letters) succeeded,
  batch after batch in consumption order;
* a batch retried after a failed-looking insert carries the same dedup token, and
  every table is a ReplacingMergeTree on natural keys, so replays never show as
  duplicates in the documented (FINAL) queries;
* while the store is down or slow, consumption pauses (memory stays bounded by two
  batches: the one being inserted and the one being filled, also when rebalances
  happen meanwhile), the insert is retried with backoff, and one log line marks each change;
* every row carries its run's team once the team is known: rows stored before
  (their run_start not seen yet) are re-stamped between inserts (:mod:`.teams`);
* rows the store refuses for their data (a constraint, a value a column cannot hold)
  are not an outage: the batch is inserted in halves around them, and the refused
  messages go to the dead-letter topic with the store's reason (:mod:`.rejections`);
* with a team (``--team a`` or ``'*'``, :mod:`.routing`) every record's team is its
  topic's, and a record of a run another team owns goes to its team's dead-letter
  topic instead of the store (:mod:`.ownership`).

With a ``chdb://`` DSN the process that runs the worker owns the store; the
``rankstream sink`` command serves its HTTP interface
(:func:`rankstream.sinks.store.httpd.serve_store`) between :meth:`SinkWorker.open`
and the end of :meth:`SinkWorker.run`.

A batch is flushed when it holds ``batch_rows`` rows, when its first message is
``batch_seconds`` old, or when the consumer has caught up (a poll returned
nothing and the batch ends at the high watermark of each of its partitions)
while the batch is at least ``caught_up_rows`` (default: half of ``batch_rows``)
large: at the end of a backlog the last rows do not wait for the timer, and a
trickle of messages still goes out in time-based batches.

Pipelining: a full batch's insert runs on one background thread while the
consumer thread fetches and converts the next batch. The consumer, the
dead-letter producer and the commits stay on the consumer thread, and a batch
is handed over only after the previous one was inserted and committed, so at
most one insert is in flight and commits keep their order. A failed background
attempt is retried on the consumer thread by the usual loop (pause, backoff,
one log line per state change), with the same dedup token.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rankstream.config import Settings
from rankstream.errors import one_line
from rankstream.sinks.dead_letters import DeadLetterSender
from rankstream.sinks.offsets import caught_up, commit
from rankstream.sinks.outage import SHUTDOWN_GRACE_S, Retrier, Stopped
from rankstream.sinks.pending import PendingBatch
from rankstream.sinks.records import Batch
from rankstream.sinks.rejections import Rejected
from rankstream.sinks.routing import Router
from rankstream.sinks.stats import SinkStats
from rankstream.sinks.store import parse_dsn
from rankstream.sinks.writer import BatchWriter, batch_token, open_for_writing

log = logging.getLogger("rankstream.sink")


@dataclass
class _InFlight:
    """A batch handed to the insert thread, not yet committed."""

    pending: PendingBatch
    ranges: dict[tuple[str, int], tuple[int, int]]
    token: str
    batch: Batch
    future: Future[int]
    started: float = field(default_factory=time.monotonic)


class SinkWorker:
    """Consume ``.events``, ``.steps`` and ``.alerts`` and persist them; ``run()`` blocks until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_rows: int = 50_000,
        batch_seconds: float = 1.0,
        group_id: str | None = None,
        max_poll_records: int = 5000,
        caught_up_rows: int | None = None,
        topic_refresh_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.dsn = parse_dsn(settings.dsn)
        self.batch_rows = max(1, batch_rows)
        self.batch_seconds = batch_seconds
        self.caught_up_rows = max(1, self.batch_rows // 2 if caught_up_rows is None else caught_up_rows)
        self.group_id = group_id or f"{settings.topic_prefix}.sink"
        self.max_poll_records = max_poll_records
        self.topic_refresh_s = topic_refresh_s  # consumer metadata age: how soon new (team) topics are read
        self.router = Router(settings)
        self.stats = SinkStats()
        self.on_stored: Any = None  # called with each stored batch's seconds (rankstream.sinks.prom)
        self.ready = threading.Event()  # set while consuming
        self.writer = BatchWriter()
        self._pending = PendingBatch()
        self._inflight: _InFlight | None = None
        self._flushing = False  # inside _flush/_finish_inflight (whose store retries poll the consumer)
        self._inserter: ThreadPoolExecutor | None = None
        self._consumer: Any = None
        self.rebalance_listener: Any = None  # one per worker (rankstream.sinks.worker_rebalance)
        self._consumer_thread: threading.Thread | None = None  # the thread that polls (set by the loop)
        self.retrier = Retrier(self._count_outage)
        self._dead_letters = DeadLetterSender(settings, self.retrier)
        self._stop = self.retrier.stop

    # ------------------------------------------------------------------ lifecycle

    def open(self, stop_event: threading.Event | None = None) -> bool:
        """Open and migrate the store, waiting with backoff while it is down; False when stopped first.

        :meth:`run` opens the store itself when this was not called; the CLI calls
        it first to serve an embedded store's HTTP interface before consuming.
        """
        if stop_event is not None:
            self._stop = self.retrier.stop = stop_event
        if self.writer.client is None:
            try:
                self.writer.client = self.retrier.with_store(
                    lambda: open_for_writing(self.dsn.raw), "open", paused=False
                )
                self.retrier.with_store(self.writer.adopt_stored_teamless, "team-less runs", paused=False)
            except Stopped:
                log.info("sink: stopped while waiting for the store; uncommitted messages will be re-read")
                return False
        return True

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Run until ``stop_event`` is set; then flush, commit and :meth:`close`."""
        try:
            if not self.open(stop_event):
                return
            from rankstream.sinks.worker_rebalance import make_consumer

            self._consumer = self.retrier.consumer = make_consumer(self)
            self.ready.set()
            log.info(
                "sink: consuming %s into %s (group %s)",
                self.router.describe(),
                self.dsn.raw if self.dsn.embedded else self.dsn.scheme + "://...",
                self.group_id,
            )
            self._loop()
        except Stopped:
            log.info("sink: stopped while waiting for the store; uncommitted messages will be re-read")
        finally:
            self.close()

    def close(self) -> None:
        """Release the insert thread, the consumer, the DLQ producer and the store client (idempotent)."""
        if self._inserter is not None:
            self._inserter.shutdown(wait=True, cancel_futures=True)  # an insert in flight is left to finish
            self._inserter = None
        consumer, self._consumer, self.retrier.consumer = self._consumer, None, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # closing must not mask the reason we stop
                log.warning("sink: closing the consumer failed: %s", exc)
        self._dead_letters.close()
        client, self.writer.client = self.writer.client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass
        self.ready.clear()

    # ------------------------------------------------------------------ main loop

    def _loop(self) -> None:
        from rankstream.sinks.worker_rebalance import membership_checks

        consumer, router = self._consumer, self.router
        self._consumer_thread = threading.current_thread()
        checks = membership_checks(self, consumer)
        while not self._stop.is_set():
            for check in checks:
                check(consumer)
            self._settle()
            if self.writer.restamp_due():
                self._restamp_teams()
            # While an insert runs, poll briefly so its offsets are committed soon after it lands.
            if router.topics:
                records = consumer.poll(timeout_ms=100 if self._inflight is None else 10)
            else:  # a shared sink before any team's topics exist
                records, _ = {}, self._stop.wait(0.1)
            self.stats.polls += 1
            if self.retrier.rewound_after_poll():  # records of a rebalance that dropped a batch: read again
                records = {}
            self._take(records)
            pending = self._pending
            if pending.ranges and (
                pending.rows >= self.batch_rows
                or time.monotonic() - pending.started >= self.batch_seconds
                or (not records and pending.rows >= self.caught_up_rows and caught_up(consumer, pending.ranges))
            ):
                self._flush()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        self._flush(deadline=deadline, wait=True)
        if self.writer.restamp_due(force=True):
            self._restamp_teams(deadline)
        log.info("%s", self.stats.summary(self.retrier.rewound))

    def _take(self, records: dict[Any, list[Any]]) -> None:
        """Accept polled records, flushing each full batch; stop when a rebalance dropped a batch meanwhile
        (the rest of this poll is read again from the committed offsets, see :mod:`.worker_rebalance`)."""
        dropped = self.stats.dropped_batches
        for tp, batch in records.items():
            for record in batch:
                self._accept(tp.topic, record)
                if self._pending.rows >= self.batch_rows:  # memory bound: one batch plus one message
                    self._flush()
                    if self.stats.dropped_batches != dropped:
                        return

    @property
    def buffered_rows(self) -> int:
        """Rows of the batch being filled (not yet handed to the insert thread)."""
        return self._pending.rows

    def _count_outage(self) -> None:
        self.stats.outages += 1

    def _accept(self, topic: str, record: Any) -> None:
        """Decode one message into the pending batch, or queue it for the dead-letter topic."""
        self.stats.messages += 1
        pending = self._pending
        corrected = pending.team_corrected
        route = self.router.route(topic)
        pending.add(topic, record, route.kind, route.team, route.dlq)
        self.stats.team_corrected += pending.team_corrected - corrected
        stats, inflight = self.stats, self._inflight
        stats.max_buffered_rows = max(stats.max_buffered_rows, pending.rows)
        stats.max_held_rows = max(stats.max_held_rows, pending.rows + (inflight.pending.rows if inflight else 0))

    # ------------------------------------------------------------------ flushing

    def _flush(self, deadline: float | None = None, *, wait: bool = False) -> None:
        """Hand the pending batch to the insert thread once the previous batch is inserted and committed.

        With ``wait`` the call returns only after this batch, too, is inserted,
        dead-lettered and committed (shutdown, rebalance).
        """
        if self._flushing:
            return
        self._flushing = True
        try:
            self._handover(deadline, wait)
        finally:
            self._flushing = False

    def _settle(self) -> None:
        """Commit the batch in flight if its insert attempt has finished (called between polls)."""
        inflight = self._inflight
        if inflight is None or not inflight.future.done() or self._flushing:
            return
        self._flushing = True
        try:
            self._finish_inflight()
        finally:
            self._flushing = False

    def _restamp_teams(self, deadline: float | None = None) -> None:
        """Give rows stored before their run's team was known the team (with no insert in flight)."""
        if self._flushing:
            return
        self._flushing = True
        try:
            self._finish_inflight(deadline)
            runs = self.retrier.with_store(self.writer.restamp, "team re-stamp", deadline=deadline)
        finally:
            self._flushing = False
        self.stats.restamped_runs += runs

    def _handover(self, deadline: float | None, wait: bool) -> None:
        pending = self._pending
        if not pending.ranges:
            if wait:
                self._finish_inflight(deadline)
            return
        # Detach first: records polled while waiting for the store belong to the next batch.
        self._pending = PendingBatch()
        ranges = pending.offset_ranges()
        token = batch_token(ranges)
        writer = self.writer
        owned = bool(self.settings.team)  # a team mode: a run_id belongs to one team (.ownership)
        unknown = writer.unknown_runs(pending.items, pending.teams)
        if unknown:
            self._finish_inflight(deadline)  # one store call at a time (an HTTP session serves one query)
            self.retrier.with_store(lambda: writer.resolve_runs(unknown, rows=owned), "run lookup", deadline=deadline)
        if owned:
            self._refuse_foreign(pending)
        batch = writer.build(pending.items, pending.teams)  # while the previous batch is being inserted
        self._finish_inflight(deadline)
        if self._inserter is None:
            self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankstream-sink-insert")
        future = self._inserter.submit(writer.insert, batch, token)
        self._inflight = _InFlight(pending, ranges, token, batch, future)
        if wait:
            self._finish_inflight(deadline)

    def _refuse_foreign(self, pending: PendingBatch) -> None:
        """Move the messages of runs another team owns from ``pending`` to their team's dead letters."""
        foreign = self.writer.refuse_foreign(pending.items, pending.teams)
        if not foreign:
            return
        index = foreign[0][0]
        log.warning(
            "sink: %d message(s) of runs another team owns sent to their team's dead-letter topic (e.g. run %r "
            "from %s)",
            *(len(foreign), pending.items[index][1]["run_id"], pending.origins[index].topic),
        )
        pending.drop(foreign)
        self.stats.foreign_runs += len(foreign)

    def _finish_inflight(self, deadline: float | None = None) -> None:
        """Wait for the batch in flight; retry it here if its attempt failed; then dead letters and commit."""
        job = self._inflight
        if job is None:
            return
        written = job.batch.rows
        try:
            first: list[Future[int]] = [job.future]

            def attempt() -> int:
                if first:  # the background attempt counts as the first one (its failure is logged as usual)
                    return first.pop().result()
                return self.writer.insert(job.batch, job.token)

            try:
                self.retrier.with_store(attempt, "insert", deadline=deadline)
            except Rejected as exc:
                written = self._insert_around_refused(job, exc.reason, deadline)
            if job.pending.dlq:
                self._dead_letters.send(job.pending.dlq, deadline)
            commit(self._consumer, job.ranges, self.stats.committed)
        finally:
            self._inflight = None  # inserted and committed, or dropped to be re-read
        self.stats.batches += 1
        self.stats.rows_written += written
        self.stats.dlq += len(job.pending.dlq)
        if self.on_stored is not None:  # /metrics: the batch's insert-to-commit latency
            self.on_stored(time.monotonic() - job.started)

    def _insert_around_refused(self, job: _InFlight, reason: str, deadline: float | None) -> int:
        """Store the batch in halves around the messages the store refuses; queue those for the DLQ.

        Returns the rows stored.
        """
        items = job.pending.items
        stored, refused = self.writer.insert_around_refused(
            items,
            job.token,
            lambda insert: self.retrier.with_store(insert, "insert", deadline=deadline),
            job.pending.teams,
        )
        job.pending.refuse(refused)
        self.stats.rejected += len(refused)
        log.warning(
            "sink: the store refused %d of %d message(s) of a batch (%s); sent to the dead-letter topic with the "
            "reason, the rest stored",
            len(refused),
            len(items),
            refused[0][1] if refused else reason,
        )
        return stored

    def flush(self) -> None:
        """Store and commit every message consumed so far (waiting for the store; before a re-subscription)."""
        self._flush(wait=True)

    def discard_pending(self) -> None:
        """Forget the uncommitted batch (after the rebalance its messages are re-read from the committed offsets)."""
        self._pending = PendingBatch()
        self.stats.dropped_batches += 1

    def flush_once(self) -> bool:
        """One insert attempt without retries (used while partitions are being revoked); False: dropped, re-read.

        kafka-python 3 calls the rebalance listener on its network thread, where a commit cannot
        wait (it raises) and a store insert would hold up the client: there the pending batch is
        dropped and read again (a batch in flight is committed by the consumer thread later).
        """
        elsewhere = threading.current_thread() is not self._consumer_thread
        if elsewhere and not self._flushing and not self._pending.ranges:
            return True
        if elsewhere or self._flushing:
            # (or from the keep-alive poll of a store retry: committing a later batch first could skip the one
            # being retried)
            log.warning("sink: partitions revoked before the pending batch was stored; it will be re-read")
            self.discard_pending()
            return False
        try:
            self._flush(deadline=time.monotonic(), wait=True)
            return True
        except (Stopped, Exception) as exc:
            log.warning("sink: could not flush before rebalance (%s); the batch will be re-read", one_line(exc))
            self.discard_pending()
            return False


__all__ = ["SinkStats", "SinkWorker"]
