"""The sink worker: Kafka topics -> batched, deduplicated ClickHouse inserts -> offset commits.

Thin shell around :mod:`rankstream.sinks.records` (pure conversion) and
:mod:`rankstream.sinks.writer` (inserts). Guarantees:

* offsets are committed only after the batch's insert (and its dead letters) succeeded,
  batch after batch in consumption order;
* a batch retried after a failed-looking insert carries the same dedup token, and
  every table is a ReplacingMergeTree on natural keys, so replays never show as
  duplicates in the documented (FINAL) queries;
* while the store is down or slow, consumption pauses (memory stays bounded by two
  batches: the one being inserted and the one being filled), the insert is retried
  with backoff, and one log line marks each change;
* rows the store refuses for their data (a constraint, a value a column cannot hold)
  are not an outage: the batch is inserted in halves around them, and the refused
  messages go to the dead-letter topic with the store's reason (:mod:`.rejections`);
* with a ``chdb://`` DSN this process owns the store and serves its HTTP interface.

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
from rankstream.schema import InvalidEvent, decode_event, dlq_record, loads
from rankstream.sinks.records import (
    Batch,
    RunCache,
    run_row_from_end,
    run_row_from_start,
    validate_alert,
    validate_step,
)
from rankstream.sinks.rejections import Rejected, find_rejected, rejection_reason
from rankstream.sinks.store import StoreError, open_store, parse_dsn
from rankstream.sinks.writer import batch_token, insert_batch, lookup_runs, prepare_client

log = logging.getLogger("rankstream.sink")

MAX_BACKOFF_S = 5.0
NEGATIVE_LOOKUP_S = 10.0
SHUTDOWN_GRACE_S = 15.0
UNASSIGNED_REJOIN_S = 10.0  # see SinkWorker._rejoin_if_unassigned
MAX_REJOINS = 3


class _Stopped(Exception):
    """Stop was requested while waiting for the store."""


@dataclass
class SinkStats:
    """Counters a caller (tests, the CLI) can read while the worker runs."""

    messages: int = 0
    batches: int = 0
    rows_written: int = 0
    dlq: int = 0
    rejected: int = 0  # messages the store refused for their data (also counted in dlq)
    outages: int = 0
    max_buffered_rows: int = 0
    committed: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    origins: list[Any] = field(default_factory=list)  # the consumer record of each item (for the DLQ)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    rows: int = 0
    started: float = 0.0


@dataclass
class _InFlight:
    """A batch handed to the insert thread, not yet committed."""

    pending: _Pending
    ranges: dict[tuple[str, int], tuple[int, int]]
    token: str
    batch: Batch
    future: Future[int]


class SinkWorker:
    """Consume ``.events``, ``.steps`` and ``.alerts`` and persist them; ``run()`` blocks until stopped."""

    def __init__(
        self,
        settings: Settings,
        *,
        batch_rows: int = 50_000,
        batch_seconds: float = 1.0,
        serve_http: bool | None = None,
        group_id: str | None = None,
        http_port: int | None = None,
        max_poll_records: int = 5000,
        caught_up_rows: int | None = None,
    ) -> None:
        self.settings = settings
        self.dsn = parse_dsn(settings.dsn)
        self.batch_rows = max(1, batch_rows)
        self.batch_seconds = batch_seconds
        self.caught_up_rows = max(1, self.batch_rows // 2 if caught_up_rows is None else caught_up_rows)
        self.serve_http = self.dsn.embedded if serve_http is None else serve_http
        if self.serve_http and not self.dsn.embedded:
            raise StoreError("the HTTP interface is served only for an embedded chdb:// store")
        self.group_id = group_id or f"{settings.topic_prefix}.sink"
        self.http_port = settings.http_port if http_port is None else http_port
        self.max_poll_records = max_poll_records
        self.stats = SinkStats()
        self._events_topic, self._steps_topic = settings.topics.events, settings.topics.steps
        self.port: int | None = None
        self.ready = threading.Event()
        self._runs = RunCache()
        self._unknown_runs: dict[str, float] = {}
        self._pending = _Pending()
        self._rejoins = 0  # see _rejoin_if_unassigned
        self._inflight: _InFlight | None = None
        self._flushing = False  # inside _flush/_finish_inflight (whose store retries poll the consumer)
        self._inserter: ThreadPoolExecutor | None = None
        self._client: Any = None
        self._consumer: Any = None
        self._producer: Any = None
        self._store_down_since: float | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop_event: threading.Event | None = None) -> None:
        """Run until ``stop_event`` is set; then flush, commit and return."""
        from rankstream.sinks import portfile
        from rankstream.sinks.httpd import HOST, StoreHttpServer

        self._stop = stop_event or threading.Event()
        server = None
        try:
            self._client = self._with_store(self._open, "open", paused=False)
            if self.serve_http:
                assert self.dsn.path is not None
                server = StoreHttpServer(self.dsn.path, self.http_port)
                self.port = server.start()
                portfile.write(self.dsn.path, HOST, self.port)
                log.info("sink: serving the store's HTTP interface on http://%s:%d", HOST, self.port)
            self._consumer = self._make_consumer()
            self.ready.set()
            log.info(
                "sink: consuming %s, %s, %s into %s (group %s)",
                *self._topics(),
                self.dsn.raw if self.dsn.embedded else self.dsn.scheme + "://...",
                self.group_id,
            )
            self._loop()
        except _Stopped:
            log.info("sink: stopped while waiting for the store; uncommitted messages will be re-read")
        finally:
            self._close(server)

    def _open(self) -> Any:
        from rankstream.sinks.migrations import migrate

        client = open_store(self.dsn.raw)
        applied = migrate(client)
        if applied:
            log.info("sink: applied migrations %s", ", ".join(applied))
        prepare_client(client)
        return client

    def _topics(self) -> tuple[str, str, str]:
        topics = self.settings.topics
        return topics.events, topics.steps, topics.alerts

    def _make_consumer(self) -> Any:
        from kafka import KafkaConsumer
        from kafka.record import util as record_util

        if getattr(record_util, "crc32c_c", None) is None:
            log.warning("sink: the crc32c package is missing; Kafka CRC checks run in pure Python (slow)")
        from rankstream.sinks.worker_rebalance import RevokeListener

        consumer = KafkaConsumer(
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.max_poll_records,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=32 * 1024 * 1024,
            client_id=f"rankstream-sink-{self.group_id}",
            check_crcs=True,
            # A crashed sink's partitions move to its restarted successor after 10 s, not the 45 s default.
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            # Topics created after the sink joined (e.g. the compose `topics` service racing it) are
            # picked up within 30 s instead of kafka-python's 5 min metadata refresh.
            metadata_max_age_ms=30_000,
            **self.settings.kafka_python_kwargs(),
        )
        consumer.subscribe(list(self._topics()), listener=RevokeListener(self))
        return consumer

    def _close(self, server: Any) -> None:
        from rankstream.sinks import portfile

        if self._inserter is not None:
            self._inserter.shutdown(wait=True, cancel_futures=True)  # an insert in flight is left to finish
            self._inserter = None
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:  # closing must not mask the reason we stop
                log.warning("sink: closing the consumer failed: %s", exc)
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:
                log.warning("sink: closing the DLQ producer failed: %s", exc)
        if server is not None:
            assert self.dsn.path is not None
            portfile.remove(self.dsn.path)
            server.stop()
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
        self.ready.clear()

    # ------------------------------------------------------------------ main loop

    def _rejoin_if_unassigned(self, unassigned_since: float | None) -> float | None:
        """Re-subscribe when the group gave this sink no partition for a while although the
        topics have some: kafka-python 3 can join with metadata that lacks just-created topics,
        get an empty assignment and never rejoin (seen in CI: minutes of silence). A sink that
        is idle on purpose (more sinks than partitions) stops trying after a few attempts."""
        consumer = self._consumer
        if consumer.assignment():
            self._rejoins = 0
            return None
        now = time.monotonic()
        if unassigned_since is None:
            return now
        wait = UNASSIGNED_REJOIN_S * 2**self._rejoins
        if self._rejoins >= MAX_REJOINS or now - unassigned_since < wait:
            return unassigned_since
        if any(consumer.partitions_for_topic(t) for t in self._topics()):
            from rankstream.sinks.worker_rebalance import RevokeListener

            self._rejoins += 1
            log.warning("sink: no partitions assigned for %.0fs although the topics exist; rejoining", wait)
            consumer.unsubscribe()
            consumer.subscribe(list(self._topics()), listener=RevokeListener(self))
        return now

    def _loop(self) -> None:
        consumer = self._consumer
        unassigned_since: float | None = None
        while not self._stop.is_set():
            unassigned_since = self._rejoin_if_unassigned(unassigned_since)
            self._settle()
            # While an insert runs, poll briefly so its offsets are committed soon after it lands.
            records = consumer.poll(timeout_ms=100 if self._inflight is None else 10)
            for tp, batch in records.items():
                for record in batch:
                    self._accept(tp.topic, record)
                    if self._pending.rows >= self.batch_rows:  # memory bound: one batch plus one message
                        self._flush()
            pending = self._pending
            if pending.ranges and (
                pending.rows >= self.batch_rows
                or time.monotonic() - pending.started >= self.batch_seconds
                or (not records and pending.rows >= self.caught_up_rows and self._caught_up(pending))
            ):
                self._flush()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        self._flush(deadline=deadline, wait=True)
        log.info(
            "sink: stopped after %d batches, %d rows, %d message(s) to the dead-letter topic (%d refused by the "
            "store), at most %d rows buffered (plus the batch being inserted)",
            self.stats.batches,
            self.stats.rows_written,
            self.stats.dlq,
            self.stats.rejected,
            self.stats.max_buffered_rows,
        )

    def _caught_up(self, pending: _Pending) -> bool:
        """True when ``pending`` ends at the last known high watermark of every partition it holds."""
        from kafka.errors import IllegalStateError
        from kafka.structs import TopicPartition

        for (topic, part), (_, last) in pending.ranges.items():
            try:
                highwater = self._consumer.highwater(TopicPartition(topic, part))
            except IllegalStateError:  # no longer assigned
                return False
            if highwater is None or last + 1 < highwater:
                return False
        return True

    def _accept(self, topic: str, record: Any) -> None:
        """Decode one message into the pending batch, or queue it for the dead-letter topic."""
        pending = self._pending
        if not pending.ranges:
            pending.started = time.monotonic()
        key = (topic, record.partition)
        span = pending.ranges.get(key)
        if span is None:
            pending.ranges[key] = [record.offset, record.offset]
        else:
            span[1] = record.offset
        self.stats.messages += 1
        raw = record.value
        events, steps = self._events_topic, self._steps_topic
        try:
            if raw is None:
                raise InvalidEvent("empty message")
            if topic == events:
                event = decode_event(raw)
                pending.items.append(("event", event))
                pending.rows += 1 + len(event["metrics"])
            else:
                try:
                    obj = loads(raw)
                except (ValueError, TypeError) as exc:
                    raise InvalidEvent(f"not valid JSON: {str(exc).splitlines()[0][:120]}") from None
                if topic == steps:
                    rec = validate_step(obj)
                    pending.items.append(("step", rec))
                    pending.rows += 1 + len(rec["metrics"])
                else:
                    pending.items.append(("alert", validate_alert(obj)))
                    pending.rows += 1
        except InvalidEvent as exc:
            pending.dlq.append((record.key, dlq_record(raw or b"", exc.reason, topic, record.partition, record.offset)))
        else:  # one item was added
            pending.origins.append(record)
        self.stats.max_buffered_rows = max(self.stats.max_buffered_rows, pending.rows)

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

    def _handover(self, deadline: float | None, wait: bool) -> None:
        pending = self._pending
        if not pending.ranges:
            if wait:
                self._finish_inflight(deadline)
            return
        # Detach first: records polled while waiting for the store belong to the next batch.
        self._pending = _Pending()
        ranges = {k: (v[0], v[1]) for k, v in pending.ranges.items()}
        token = batch_token(ranges)
        unknown = self._unknown_runs_of(pending.items)
        if unknown:
            self._finish_inflight(deadline)  # one store call at a time (an HTTP session serves one query)
            self._with_store(lambda: self._resolve_runs(unknown), "run lookup", deadline=deadline)
        batch = self._build(pending.items)  # while the previous batch is being inserted
        self._finish_inflight(deadline)
        if self._inserter is None:
            self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankstream-sink-insert")
        future = self._inserter.submit(insert_batch, self._client, batch, token)
        self._inflight = _InFlight(pending, ranges, token, batch, future)
        if wait:
            self._finish_inflight(deadline)

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
                    return _refusal_raised(first.pop().result)
                return self._insert_or_refuse(job.batch, job.token)

            try:
                self._with_store(attempt, "insert", deadline=deadline)
            except Rejected as exc:
                written = self._insert_around_refused(job, exc.reason, deadline)
            if job.pending.dlq:
                self._send_dlq(job.pending.dlq, deadline)
            self._commit(job.ranges)
        finally:
            self._inflight = None  # inserted and committed, or dropped to be re-read
        self.stats.batches += 1
        self.stats.rows_written += written
        self.stats.dlq += len(job.pending.dlq)

    def _insert_around_refused(self, job: _InFlight, reason: str, deadline: float | None) -> int:
        """Store the batch in halves around the messages the store refuses; queue those for the DLQ.

        Returns the rows stored.
        """
        items, origins = job.pending.items, job.pending.origins
        stored = 0

        def insert(lo: int, hi: int) -> None:
            nonlocal stored
            part = self._build(items[lo:hi])
            self._with_store(
                lambda: self._insert_or_refuse(part, f"{job.token}:{lo}-{hi}"), "insert", deadline=deadline
            )
            stored += part.rows

        refused = find_rejected(len(items), insert)
        for index, why in refused:
            record = origins[index]
            job.pending.dlq.append(
                (record.key, dlq_record(record.value or b"", why, record.topic, record.partition, record.offset))
            )
        self.stats.rejected += len(refused)
        log.warning(
            "sink: the store refused %d of %d message(s) of a batch (%s); sent to %s with the reason, the rest stored",
            len(refused),
            len(items),
            refused[0][1] if refused else reason,
            self.settings.topics.dlq,
        )
        return stored

    def _insert_or_refuse(self, batch: Batch, token: str) -> int:
        """One insert attempt; a refusal of the rows themselves is raised as :class:`Rejected`."""
        return _refusal_raised(lambda: insert_batch(self._client, batch, token))

    def discard_pending(self) -> None:
        """Forget the uncommitted batch (after a rebalance its messages are re-read from the committed offsets)."""
        self._pending = _Pending()

    def flush_once(self) -> bool:
        """One insert attempt without retries (used while partitions are being revoked)."""
        if self._flushing:
            # Called from the keep-alive poll of a store retry: committing a later batch first could skip
            # the one being retried, so the pending batch is dropped and re-read instead.
            log.warning("sink: partitions revoked while waiting for the store; the pending batch will be re-read")
            self.discard_pending()
            return False
        try:
            self._flush(deadline=time.monotonic(), wait=True)
            return True
        except (_Stopped, Exception) as exc:
            log.warning("sink: could not flush before rebalance (%s); the batch will be re-read", _one_line(exc))
            self.discard_pending()
            return False

    def _unknown_runs_of(self, items: list[tuple[str, dict[str, Any]]]) -> list[str]:
        """Runs of ``items`` whose team the run cache does not know (and that were not looked up lately)."""
        starts = {rec["run_id"] for kind, rec in items if kind == "event" and rec["kind"] == "run_start"}
        now = time.monotonic()
        runs, negative = self._runs, self._unknown_runs
        return sorted(
            {
                run_id
                for run_id in {rec["run_id"] for kind, rec in items if kind != "alert"}
                if run_id not in runs and run_id not in starts and now - negative.get(run_id, -1e9) > NEGATIVE_LOOKUP_S
            }
        )

    def _resolve_runs(self, unknown: list[str]) -> None:
        """Make the run cache know the team of the ``unknown`` runs (one store query)."""
        if not unknown:
            return
        now = time.monotonic()
        found = lookup_runs(self._client, unknown)
        for run_id in unknown:
            if run_id in found:
                self._runs.put(found[run_id])
                self._unknown_runs.pop(run_id, None)
            else:
                self._unknown_runs[run_id] = now
        if len(self._unknown_runs) > 100_000:
            self._unknown_runs.clear()

    def _build(self, items: list[tuple[str, dict[str, Any]]]) -> Batch:
        """Rows of every table for the pending items; run_start metadata applies to the whole batch."""
        runs = self._runs
        events: list[dict[str, Any]] = []
        lifecycle: list[dict[str, Any]] = []
        others: list[tuple[str, dict[str, Any]]] = []
        for kind, rec in items:
            if kind != "event":
                others.append((kind, rec))
                continue
            events.append(rec)
            if rec["kind"] == "run_start":
                runs.put(_merge_run(runs.get(rec["run_id"]), run_row_from_start(rec)))
                lifecycle.append(rec)
            elif rec["kind"] == "run_end":
                lifecycle.append(rec)
        batch = Batch()
        if events:
            # A run's team is fixed once the batch's run_start events are merged (run_end keeps it).
            team = {run_id: runs.team(run_id) for run_id in {rec["run_id"] for rec in events}}
            batch.add_events(events, [team[rec["run_id"]] for rec in events])
        for rec in lifecycle:
            if rec["kind"] == "run_start":
                batch.add_run(runs.get(rec["run_id"]) or run_row_from_start(rec))
            else:
                row = run_row_from_end(runs.get(rec["run_id"]), rec)
                runs.put(row)
                batch.add_run(row)
        for kind, rec in others:
            if kind == "step":
                batch.add_step(rec, runs.team(rec["run_id"]))
            else:
                batch.add_alert(rec)
        return batch

    def _send_dlq(self, messages: list[tuple[bytes | None, bytes]], deadline: float | None) -> None:
        def send() -> None:
            if self._producer is None:
                from kafka import KafkaProducer

                self._producer = KafkaProducer(acks="all", linger_ms=5, **self.settings.kafka_python_kwargs())
            futures = [self._producer.send(self.settings.topics.dlq, key=k, value=v) for k, v in messages]
            self._producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=30)

        self._retry(send, "dead-letter topic", deadline)
        log.info("sink: %d invalid message(s) sent to %s", len(messages), self.settings.topics.dlq)

    def _commit(self, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
        from kafka.errors import KafkaError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets = {TopicPartition(t, p): OffsetAndMetadata(last + 1, "", -1) for (t, p), (_, last) in ranges.items()}
        try:
            self._consumer.commit(offsets)
        except KafkaError as exc:
            # The rows are stored; a failed commit only means they are read again and collapse as duplicates.
            log.warning("sink: offset commit failed (%s); the batch will be re-read and deduplicated", _one_line(exc))
            return
        for (topic, part), (_, last) in ranges.items():
            self.stats.committed[f"{topic}/{part}"] = last + 1

    # ------------------------------------------------------------------ store outages

    def _with_store(self, fn: Any, what: str, *, paused: bool = True, deadline: float | None = None) -> Any:
        """Call ``fn`` until it succeeds; while it fails, consumption is paused and retried with backoff."""
        return self._retry(fn, f"store ({what})", deadline, pause=paused)

    def _retry(self, fn: Any, what: str, deadline: float | None, pause: bool = True) -> Any:
        delay = 0.1
        failing_since: float | None = None
        while True:
            try:
                result = fn()
            except Exception as exc:
                if isinstance(exc, _Stopped):
                    raise
                if isinstance(exc, Rejected):  # the store answers again: refused rows are not an outage
                    self._recovered(what, failing_since, pause)
                    raise
                if failing_since is None:
                    failing_since = time.monotonic()
                    self.stats.outages += 1
                    log.warning(
                        "sink: %s unavailable (%s); %sretrying with backoff",
                        what,
                        _one_line(exc),
                        "consumption paused, " if pause and self._consumer is not None else "",
                    )
                    if pause:
                        self._pause(True)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise _Stopped() from exc
                if self._stop.is_set() and deadline is None:
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
            self._pause(False)

    def _pause(self, paused: bool) -> None:
        consumer = self._consumer
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
        if self._consumer is None:
            self._stop.wait(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            records = self._consumer.poll(timeout_ms=int(min(left, 0.5) * 1000))
            if records:  # only possible right after a rebalance reset the pause; keep them for later
                for tp, batch in records.items():
                    for record in batch:
                        self._accept(tp.topic, record)


def _merge_run(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """A run_start row, keeping metadata an earlier run_start (e.g. rank 0's) already provided."""
    if not previous:
        return new
    merged = dict(new)
    for key, value in previous.items():
        if value not in ("", None, 0) and merged.get(key) in ("", None, 0):
            merged[key] = value
    merged["started_at"] = min(previous["started_at"], new["started_at"])
    merged["updated_at"] = max(previous["updated_at"], new["updated_at"])
    if previous.get("status") not in ("running", None):
        merged["status"], merged["ended_at"] = previous["status"], previous.get("ended_at")
    return merged


def _refusal_raised(insert: Any) -> int:
    """Call ``insert``; a refusal of the data itself is raised as :class:`Rejected` (not retried)."""
    try:
        return insert()
    except Exception as exc:
        reason = rejection_reason(exc)
        if reason is None:
            raise
        raise Rejected(reason) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
