"""The background half of a reporter: one daemon thread that encodes, sends, spools and replays.

It owns the producer (opened through a :class:`~rankstream.producer.transport.Transport`,
lazily and never on the training thread) and decides where each event goes:

* connected and no backlog: straight to Kafka, kept in an in-flight list until acked;
* broker unreachable, a send failed, acks stalled, or a backlog exists: appended to the spool
  (unacked in-flight events too, so nothing is lost; at worst they arrive twice);
* once connected again: the spool is replayed in order, then leftovers of dead reporters
  (a run's ranks merged by event time);
* more than ``queue_size`` events waiting (this thread is behind): the oldest are spooled,
  in order, by this thread (the training thread only ever appends to the queue).

Work is done in slices of at most ``SLICE_EVENTS`` events, each followed by a
short real sleep while more is waiting: a slice holds the GIL for a few
hundred microseconds, and the sleep hands it back, so a training thread that
wants it waits at most about one slice instead of the interpreter's 5 ms
switch interval.

A failed send (including the idempotent producer's OutOfOrderSequenceNumber /
UnknownProducerId after a broker restart lost its producer state: kafka-python
fails the batch's future and bumps its epoch) closes the producer; the next
connect creates a fresh one and the spooled events are resent.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.errors import one_line
from rankstream.producer.events import EventEncoder
from rankstream.producer.kafka_io import DeliveryError, KafkaTransport, deliver
from rankstream.producer.orphans import OrphanSpools
from rankstream.producer.spool import Spool
from rankstream.producer.spooling import QueuedEvent, SpoolWriter, drain, drain_all
from rankstream.producer.transport import Producer, SendFuture, Transport, failure_reason

log = logging.getLogger("rankstream.producer")

POLL_S = 0.05
SLICE_EVENTS = 64  # ~0.3 ms of encoding (12 metrics) between two GIL hand-backs
SLICE_PAUSE_S = 0.0002
STALL_S = 5.0  # no ack for this long: treat the broker as gone and spool what is in flight
REPLAY_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0


class Lifecycle(enum.Enum):
    """Where the sender is in its life; only ``close()`` (training thread) moves it forward."""

    RUNNING = "running"  # taking events from the queue
    CLOSING = "closing"  # close() was called: deliver until the deadline, then spool the rest
    ABANDONED = "abandoned"  # close() stopped waiting for the thread (stuck in I/O): it only spools its rest


class Connection(enum.Enum):
    """The sender thread's link to the broker."""

    NOT_CONNECTED = "not_connected"  # no producer yet (or let go of at exit), nothing failed
    CONNECTED = "connected"  # a producer is open
    OUTAGE = "outage"  # the last connect or send failed: events go to the spool until a reconnect


class Sender:
    """Queue consumer and Kafka/spool owner for one reporter."""

    def __init__(
        self,
        settings: Settings,
        encoder: EventEncoder,
        spool: Spool,
        spool_root: Path,
        key: bytes,
        client_id: str,
        *,
        transport: Transport | None = None,
        queue_size: int = 10000,
    ) -> None:
        self.topic = settings.topics.events
        self.transport: Transport = transport if transport is not None else KafkaTransport(settings)
        self.encoder = encoder
        self.spool = spool
        self.key = key
        self.queue: deque[QueuedEvent] = deque()
        self.queue_size = max(int(queue_size), 1)
        self.client_id = client_id
        self.counts = {
            "sent": 0,
            "spooled": 0,
            "replayed": 0,
            "overflow": 0,
            "spool_errors": 0,
            "connects": 0,
            "connect_attempts": 0,
            "send_failures": 0,
            "producer_recreated": 0,
        }
        self.lifecycle = Lifecycle.RUNNING
        self.connection = Connection.NOT_CONNECTED
        self.last_error = ""
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self._inflight: deque[tuple[bytes, SendFuture, float]] = deque()
        self._next_connect = 0.0
        self._backoff = BACKOFF_MIN_S
        self._deadline = float("inf")
        self._orphans = OrphanSpools(spool_root, exclude=spool.dir)
        self._writer = SpoolWriter(encoder, spool, self.counts)
        self._spool_payloads = self._writer.write
        self._spool_events = self._writer.write_events

    @property
    def _closing(self) -> bool:
        return self.lifecycle is not Lifecycle.RUNNING

    # ------------------------------------------------------------ training thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rankstream-sender", daemon=True)
            self._thread.start()

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout`` s; spool the rest; release the spool."""
        self._deadline = time.monotonic() + max(timeout, 0.0)
        self.lifecycle = Lifecycle.CLOSING
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0) + 1.0)
            if not self._thread.is_alive():
                return
            # Stuck (e.g. inside kafka-python): take over the queue; the thread spools its own rest.
            self.lifecycle = Lifecycle.ABANDONED
        self._spool_events(drain_all(self.queue))
        if self._thread is None:
            self.spool.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread, producer and descriptors without closing anything shared."""
        producer = self._producer
        if producer is not None:
            _FORK_KEEPALIVE.append(producer)  # never garbage-collected here: its __del__ would flush/close
            with contextlib.suppress(Exception):
                producer.close = lambda *a, **k: None  # type: ignore[method-assign]
        self._producer = None
        self.connection = Connection.NOT_CONNECTED
        self._thread = None
        self._inflight = deque()
        self.queue = deque()
        self._wake = threading.Event()
        self.spool.forget_after_fork()
        self._orphans.forget_after_fork()

    # ------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            while self.lifecycle is not Lifecycle.ABANDONED:
                if self._producer is None and self._may_connect():
                    self._connect()  # before taking events: send directly rather than spool when possible
                overflowed = self._spool_overflow()
                batch = drain(self.queue, SLICE_EVENTS)
                if batch:
                    self._handle(batch)
                self._reap()
                if self._closing and (not self.queue) and (self._done_closing() or time.monotonic() >= self._deadline):
                    break
                worked = self._maintain()
                if overflowed or batch or worked:
                    if self.queue or worked:
                        time.sleep(SLICE_PAUSE_S)  # hand the GIL back between slices (see the module doc)
                else:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
        except Exception as exc:  # pragma: no cover - a bug here must not lose the queue
            log.exception("rankstream: sender thread failed: %s", exc)
        finally:
            self._finish()

    def _spool_overflow(self) -> bool:
        """More than ``queue_size`` events wait (this thread is behind): spool the oldest slice, in order.

        Spooling reads their tensors and frees the references; the events still
        queued after them go to the spool too while it has a backlog, so order holds.
        """
        excess = len(self.queue) - self.queue_size
        if excess <= 0:
            return False
        events = drain(self.queue, min(excess, SLICE_EVENTS))
        self.counts["overflow"] += len(events)
        self._spool_events(events)
        return True

    def _handle(self, batch: list[QueuedEvent]) -> None:
        payloads = self._writer.encode(batch)
        if self._producer is None or self.spool.pending:
            self._spool_payloads(payloads)  # keeps order: the backlog goes first
            return
        now = time.monotonic()
        for i, payload in enumerate(payloads):
            try:
                future = self._producer.send(self.topic, value=payload, key=self.key)
            except Exception as exc:
                self._spool_payloads(payloads[i:])
                self._fail(one_line(exc))
                return
            self._inflight.append((payload, future, now))

    def _reap(self) -> None:
        inflight = self._inflight
        while inflight and inflight[0][1].is_done:
            future = inflight[0][1]
            if future.failed():
                self._fail(failure_reason(future))
                return
            inflight.popleft()
            self.counts["sent"] += 1
        if inflight and time.monotonic() - inflight[0][2] > STALL_S:
            self._fail(f"no acknowledgement for {STALL_S:.0f}s")

    def _fail(self, reason: str) -> None:
        """Kafka failed us: spool everything unacknowledged, drop the producer, retry later."""
        self.counts["send_failures"] += 1
        self.last_error = reason
        self._spool_payloads([p for p, _, _ in self._inflight])
        self._inflight.clear()
        producer, self._producer = self._producer, None
        if producer is not None:
            self.transport.release(producer, timeout=0.0)
        self._schedule_retry(reason)

    def _schedule_retry(self, reason: str) -> None:
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        if self.connection is not Connection.OUTAGE:
            self.connection = Connection.OUTAGE
            log.warning(
                "rankstream: cannot deliver to Kafka (%s): spooling events to %s and reconnecting",
                reason,
                self.spool.dir,
            )

    def _connect(self) -> None:
        self.counts["connect_attempts"] += 1
        try:
            self._producer = self.transport.connect(self.client_id)
        except Exception as exc:
            self._producer = None
            self.last_error = one_line(exc)
            self._schedule_retry(self.last_error)
            return
        if self.counts["connects"]:
            self.counts["producer_recreated"] += 1  # an earlier producer failed and was closed
        self.counts["connects"] += 1
        self._backoff = BACKOFF_MIN_S
        if self.connection is Connection.OUTAGE:
            log.info("rankstream: Kafka producer ready again: replaying %d spooled events", self.spool.pending)
        self.connection = Connection.CONNECTED

    def _may_connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_connect:
            return False
        return not self._closing or self._connect_fits_before_deadline(now)

    def _connect_fits_before_deadline(self, at: float) -> bool:
        """While closing: a connect attempt started at ``at`` can still finish before the deadline."""
        return self._deadline - at > self.transport.connect_timeout_s + 1.0

    def _maintain(self) -> bool:
        """One unit of background work (connect, replay a chunk); True when it did something."""
        if self._producer is None:
            if self._may_connect():
                self._connect()
                return True
            return False
        if self.spool.pending:
            return self._replay_chunk(self._producer, self.spool)
        if not self._closing and not self._orphans.done and not self._inflight:
            return self._replay_orphans(self._producer)
        return False

    def _replay_chunk(self, producer: Producer, spool: Spool) -> bool:
        """Deliver the oldest chunk of this reporter's own spool (its key is ours)."""
        chunk = spool.read()
        if chunk is None:
            return False
        records = [(self.key, payload) for payload in chunk.payloads]
        if self._deliver(producer, records):
            spool.commit(chunk)
        return True

    def _deliver(self, producer: Producer, records: list[tuple[bytes, bytes]]) -> bool:
        """Send and wait for the acks (bounded by the close deadline while closing); False after a failure."""
        timeout = REPLAY_TIMEOUT_S
        if self._closing:
            timeout = max(min(timeout, self._deadline - time.monotonic()), 0.1)
        try:
            deliver(producer, self.topic, records, timeout)
        except DeliveryError as exc:
            self._fail(str(exc))
            return False
        self.counts["replayed"] += len(records)
        return True

    def _replay_orphans(self, producer: Producer) -> bool:
        """Deliver spools left by reporters that died: one batch of one run's ranks, merged by time, per call."""
        try:
            merge = self._orphans.current()
            if merge is None:
                return False
            batch = merge.next_batch()
            if batch is None:
                self._orphans.finish_current()
            elif self._deliver(producer, batch):
                merge.commit()
            else:
                merge.rewind()
            return True
        except OSError as exc:
            self.last_error = one_line(exc)
            self._orphans.stop()
            return False

    def _done_closing(self) -> bool:
        if self._producer is None:
            # A reconnect waiting on its backoff is not a reason to give up: keep trying until the
            # deadline leaves no room for another attempt (then the rest stays in the spool).
            return not self._connect_fits_before_deadline(max(time.monotonic(), self._next_connect))
        return not self._inflight and not self.spool.pending

    def _finish(self) -> None:
        """Exit path: whatever is not acknowledged goes to the spool, then let go of everything."""
        while self._inflight and time.monotonic() < self._deadline and self.lifecycle is not Lifecycle.ABANDONED:
            self._reap()
            time.sleep(0.005)
        self._spool_payloads([p for p, _, _ in self._inflight])
        self._inflight.clear()
        self._spool_events(drain_all(self.queue))
        if self._producer is not None:
            self.transport.release(self._producer, timeout=min(max(self._deadline - time.monotonic(), 0.0), 1.0))
        self._producer = None
        if self.connection is Connection.CONNECTED:
            self.connection = Connection.NOT_CONNECTED
        self._orphans.close()
        if self.lifecycle is not Lifecycle.ABANDONED:
            self.spool.close()


_FORK_KEEPALIVE: list[Any] = []
