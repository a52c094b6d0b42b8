"""The sink worker: Kafka topics -> batched, deduplicated ClickHouse inserts -> offset commits.

Thin shell around :mod:`rankstream.sinks.records` (pure conversion) and
:mod:`rankstream.sinks.writer` (inserts). Guarantees:

* offsets are committed only after the batch's insert (and its dead letters) succeeded;
* a batch retried after a failed-looking insert carries the same dedup token, and
  every table is a ReplacingMergeTree on natural keys, so replays never show as
  duplicates in the documented (FINAL) queries;
* while the store is down or slow, consumption pauses (memory stays bounded by one
  batch), the insert is retried with backoff, and one log line marks each change;
* with a ``chdb://`` DSN this process owns the store and serves its HTTP interface.
"""

from __future__ import annotations

import logging
import threading
import time
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
from rankstream.sinks.store import StoreError, open_store, parse_dsn
from rankstream.sinks.writer import batch_token, insert_batch, lookup_runs

log = logging.getLogger("rankstream.sink")

MAX_BACKOFF_S = 5.0
NEGATIVE_LOOKUP_S = 10.0
SHUTDOWN_GRACE_S = 15.0


class _Stopped(Exception):
    """Stop was requested while waiting for the store."""


@dataclass
class SinkStats:
    """Counters a caller (tests, the CLI) can read while the worker runs."""

    messages: int = 0
    batches: int = 0
    rows_written: int = 0
    dlq: int = 0
    outages: int = 0
    max_buffered_rows: int = 0
    committed: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pending:
    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    dlq: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    rows: int = 0
    started: float = 0.0


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
    ) -> None:
        self.settings = settings
        self.dsn = parse_dsn(settings.dsn)
        self.batch_rows = max(1, batch_rows)
        self.batch_seconds = batch_seconds
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
            **self.settings.kafka_python_kwargs(),
        )
        consumer.subscribe(list(self._topics()), listener=RevokeListener(self))
        return consumer

    def _close(self, server: Any) -> None:
        from rankstream.sinks import portfile

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

    def _loop(self) -> None:
        consumer = self._consumer
        while not self._stop.is_set():
            records = consumer.poll(timeout_ms=100)
            for tp, batch in records.items():
                for record in batch:
                    self._accept(tp.topic, record)
                    if self._pending.rows >= self.batch_rows:  # memory bound: one batch plus one message
                        self._flush()
            pending = self._pending
            if pending.ranges and (
                pending.rows >= self.batch_rows or time.monotonic() - pending.started >= self.batch_seconds
            ):
                self._flush()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        self._flush(deadline=deadline)
        log.info(
            "sink: stopped after %d batches, %d rows, at most %d rows buffered",
            self.stats.batches,
            self.stats.rows_written,
            self.stats.max_buffered_rows,
        )

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
        self.stats.max_buffered_rows = max(self.stats.max_buffered_rows, pending.rows)

    # ------------------------------------------------------------------ flushing

    def _flush(self, deadline: float | None = None) -> None:
        """Insert the pending batch, dead-letter its bad messages, then commit its offsets."""
        pending = self._pending
        if not pending.ranges:
            return
        # Detach first: records polled while waiting for the store belong to the next batch.
        self._pending = _Pending()
        ranges = {k: (v[0], v[1]) for k, v in pending.ranges.items()}
        token = batch_token(ranges)
        self._with_store(lambda: self._resolve_runs(pending.items), "run lookup", deadline=deadline)
        batch = self._build(pending.items)
        self._with_store(lambda: insert_batch(self._client, batch, token), "insert", deadline=deadline)
        if pending.dlq:
            self._send_dlq(pending.dlq, deadline)
        self._commit(ranges)
        self.stats.batches += 1
        self.stats.rows_written += batch.rows
        self.stats.dlq += len(pending.dlq)

    def discard_pending(self) -> None:
        """Forget the uncommitted batch (after a rebalance its messages are re-read from the committed offsets)."""
        self._pending = _Pending()

    def flush_once(self) -> bool:
        """One insert attempt without retries (used while partitions are being revoked)."""
        try:
            self._flush(deadline=time.monotonic())
            return True
        except (_Stopped, Exception) as exc:
            log.warning("sink: could not flush before rebalance (%s); the batch will be re-read", _one_line(exc))
            self.discard_pending()
            return False

    def _resolve_runs(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Make the run cache know the team of every run in ``items`` (one store query per batch at most)."""
        starts = {rec["run_id"] for kind, rec in items if kind == "event" and rec["kind"] == "run_start"}
        now = time.monotonic()
        unknown = sorted(
            {
                rec["run_id"]
                for kind, rec in items
                if kind != "alert"
                and rec["run_id"] not in self._runs
                and rec["run_id"] not in starts
                and now - self._unknown_runs.get(rec["run_id"], -1e9) > NEGATIVE_LOOKUP_S
            }
        )
        if not unknown:
            return
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
        for kind, rec in items:
            if kind == "event" and rec["kind"] == "run_start":
                runs.put(_merge_run(runs.get(rec["run_id"]), run_row_from_start(rec)))
        batch = Batch()
        for kind, rec in items:
            if kind == "event":
                batch.add_event(rec, runs.team(rec["run_id"]))
                if rec["kind"] == "run_start":
                    batch.add_run(runs.get(rec["run_id"]) or run_row_from_start(rec))
                elif rec["kind"] == "run_end":
                    row = run_row_from_end(runs.get(rec["run_id"]), rec)
                    runs.put(row)
                    batch.add_run(row)
            elif kind == "step":
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
            if failing_since is not None:
                log.info("sink: %s available again after %.1f s; resuming", what, time.monotonic() - failing_since)
                if pause:
                    self._pause(False)
            return result

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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
