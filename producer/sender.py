"""The background half of a reporter: one daemon thread that encodes, sends, spools and replays.

It owns the kafka-python producer (created lazily here, never on the training
thread) and decides where each event goes:

* connected and no backlog: straight to Kafka, kept in an in-flight list until acked;
* broker unreachable, a send failed, acks stalled, or a backlog exists: appended to the spool
  (unacked in-flight events too, so nothing is lost; at worst they arrive twice);
* once connected again: the spool is replayed in order, then leftovers of dead reporters.

A failed send (including the idempotent producer's OutOfOrderSequenceNumber /
UnknownProducerId after a broker restart lost its producer state: kafka-python
fails the batch's future and bumps its epoch) closes the producer; the next
connect creates a fresh one and the spooled events are resent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.producer import kafka_io
from rankstream.producer.events import EventEncoder
from rankstream.producer.kafka_io import (
    DeliveryError,
    close_producer,
    deliver,
    describe,
    make_producer,
)
from rankstream.producer.spool import Spool, message_key, orphan_spools

log = logging.getLogger("rankstream.producer")

# An item on the queue: (kind, step, ts, seq, metrics, tags, meta), built by the training thread.
Item = tuple[str, int, float, int, Any, Any, Any]

POLL_S = 0.05
BATCH_MAX = 1000
STALL_S = 5.0  # no ack for this long: treat the broker as gone and spool what is in flight
REPLAY_TIMEOUT_S = 10.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 5.0


class Pipeline:
    """Queue consumer and Kafka/spool owner for one reporter."""

    def __init__(
        self,
        settings: Settings,
        encoder: EventEncoder,
        spool: Spool,
        spool_root: Path,
        key: bytes,
        queue_size: int,
        client_id: str,
    ) -> None:
        self.settings = settings
        self.topic = settings.topics.events
        self.encoder = encoder
        self.spool = spool
        self.spool_root = spool_root
        self.key = key
        self.queue: deque[Item] = deque()
        self.queue_size = queue_size
        self.client_id = client_id
        self.counts = {
            "sent": 0,
            "spooled": 0,
            "replayed": 0,
            "overflow": 0,
            "connects": 0,
            "connect_attempts": 0,
            "send_failures": 0,
            "producer_recreated": 0,
        }
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Any = None
        self._inflight: deque[tuple[bytes, Any, float]] = deque()
        self._next_connect = 0.0
        self._backoff = BACKOFF_MIN_S
        self._closing = False
        self._deadline = float("inf")
        self._abandoned = False
        self._outage = False
        self._orphans: Iterator[Spool] | None = None
        self._orphan: Spool | None = None
        self._orphans_done = False
        self.last_error = ""

    # ------------------------------------------------------------ training thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rankstream-sender", daemon=True)
            self._thread.start()

    def overflow(self, item: Item) -> None:
        """The memory queue is full (the sender is behind): write this event to the spool directly."""
        try:
            self.spool.append([self.encoder.encode(*item)])
            self.counts["overflow"] += 1
            self.counts["spooled"] += 1
        except Exception as exc:  # disk trouble must not reach the training loop
            self.last_error = describe(exc)

    def close(self, timeout: float) -> None:
        """Deliver what can be delivered within ``timeout`` s; spool the rest; release the spool."""
        self._deadline = time.monotonic() + max(timeout, 0.0)
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0) + 1.0)
            if not self._thread.is_alive():
                return
            # Stuck (e.g. inside kafka-python): take over the queue; the thread spools its own rest.
            self._abandoned = True
        self._spool_items(self._drain_all())
        if self._thread is None:
            self.spool.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's thread, producer and descriptors without closing anything shared."""
        producer = self._producer
        if producer is not None:
            _FORK_KEEPALIVE.append(producer)  # never garbage-collected here: its __del__ would flush/close
            with contextlib.suppress(Exception):
                producer.close = lambda *a, **k: None
        self._producer = None
        self._thread = None
        self._inflight = deque()
        self.queue = deque()
        self._wake = threading.Event()
        self.spool.forget_after_fork()
        self._orphan = None
        self._orphans = None

    # ------------------------------------------------------------ sender thread

    def _run(self) -> None:
        try:
            while not self._abandoned:
                if self._producer is None and self._may_connect():
                    self._connect()  # before taking events: send directly rather than spool when possible
                batch = self._drain()
                if batch:
                    self._handle(batch)
                self._reap()
                if self._closing and (not self.queue) and (self._done_closing() or time.monotonic() >= self._deadline):
                    break
                worked = self._maintain()
                if not batch and not worked:
                    self._wake.wait(POLL_S)
                    self._wake.clear()
        except Exception as exc:  # pragma: no cover - a bug here must not lose the queue
            log.exception("rankstream: sender thread failed: %s", exc)
        finally:
            self._finish()

    def _drain(self, limit: int = BATCH_MAX) -> list[Item]:
        q = self.queue
        out = []
        while q and len(out) < limit:
            out.append(q.popleft())
        return out

    def _drain_all(self) -> list[Item]:
        out = []
        q = self.queue
        while q:
            try:
                out.append(q.popleft())
            except IndexError:
                break
        return out

    def _encode(self, items: list[Item]) -> list[bytes]:
        out = []
        for item in items:
            try:
                out.append(self.encoder.encode(*item))
            except Exception as exc:  # pragma: no cover - encode() is total; belt and braces
                self.encoder.dropped_invalid += 1
                self.last_error = describe(exc)
        return out

    def _spool_items(self, items: list[Item]) -> None:
        self._spool_payloads(self._encode(items))

    def _spool_payloads(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        try:
            self.spool.append(payloads)
            self.counts["spooled"] += len(payloads)
        except Exception as exc:
            self.last_error = describe(exc)
            log.error("rankstream: cannot write spool %s (%s): %d events lost", self.spool.dir, exc, len(payloads))

    def _handle(self, batch: list[Item]) -> None:
        payloads = self._encode(batch)
        if self._producer is None or self.spool.pending:
            self._spool_payloads(payloads)  # keeps order: the backlog goes first
            return
        now = time.monotonic()
        for i, payload in enumerate(payloads):
            try:
                future = self._producer.send(self.topic, value=payload, key=self.key)
            except Exception as exc:
                self._spool_payloads(payloads[i:])
                self._fail(describe(exc))
                return
            self._inflight.append((payload, future, now))

    def _reap(self) -> None:
        inflight = self._inflight
        while inflight and inflight[0][1].is_done:
            future = inflight[0][1]
            if future.failed():
                self._fail(describe(future.exception))
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
        close_producer(producer, timeout=0.0)
        self._schedule_retry(reason)

    def _schedule_retry(self, reason: str) -> None:
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        if not self._outage:
            self._outage = True
            log.warning(
                "rankstream: cannot deliver to Kafka (%s): spooling events to %s and reconnecting",
                reason,
                self.spool.dir,
            )

    def _connect(self) -> None:
        self.counts["connect_attempts"] += 1
        try:
            self._producer = make_producer(self.settings, client_id=self.client_id)
        except Exception as exc:
            self._producer = None
            self.last_error = describe(exc)
            self._schedule_retry(self.last_error)
            return
        if self.counts["connects"]:
            self.counts["producer_recreated"] += 1  # an earlier producer failed and was closed
        self.counts["connects"] += 1
        self._backoff = BACKOFF_MIN_S
        if self._outage:
            log.warning("rankstream: Kafka producer ready again: replaying %d spooled events", self.spool.pending)
            self._outage = False

    def _may_connect(self) -> bool:
        now = time.monotonic()
        if now < self._next_connect:
            return False
        return not self._closing or self._connect_fits_before_deadline(now)

    def _connect_fits_before_deadline(self, at: float) -> bool:
        """While closing: a connect attempt started at ``at`` can still finish before the deadline."""
        return self._deadline - at > kafka_io.BOOTSTRAP_TIMEOUT_MS / 1000 + 1.0

    def _maintain(self) -> bool:
        """One unit of background work (connect, replay a chunk); True when it did something."""
        if self._producer is None:
            if self._may_connect():
                self._connect()
                return True
            return False
        if self.spool.pending:
            return self._replay_chunk(self.spool, own=True)
        if not self._closing and not self._orphans_done and not self._inflight:
            return self._replay_orphans()
        return False

    def _replay_chunk(self, spool: Spool, own: bool) -> bool:
        chunk = spool.read()
        if chunk is None:
            return False
        records = []
        for payload in chunk.payloads:
            key = self.key if own else message_key(payload)
            if key is not None:
                records.append((key, payload))
        timeout = REPLAY_TIMEOUT_S
        if self._closing:
            timeout = max(min(timeout, self._deadline - time.monotonic()), 0.1)
        try:
            deliver(self._producer, self.topic, records, timeout)
        except DeliveryError as exc:
            self._fail(str(exc))
            return True
        spool.commit(chunk)
        self.counts["replayed"] += len(records)
        return True

    def _replay_orphans(self) -> bool:
        """Deliver spools left by reporters that died (one chunk per call)."""
        try:
            if self._orphan is None:
                if self._orphans is None:
                    self._orphans = orphan_spools(self.spool_root, exclude=self.spool.dir)
                self._orphan = next(self._orphans, None)
                if self._orphan is None:
                    self._orphans_done = True
                    return False
                if self._orphan.pending:
                    log.warning("rankstream: delivering %d events left in %s", self._orphan.pending, self._orphan.dir)
            if not self._replay_chunk(self._orphan, own=False):
                self._orphan.close()
                self._orphan = None
            return True
        except OSError as exc:
            self.last_error = describe(exc)
            self._orphans_done = True
            return False

    def _done_closing(self) -> bool:
        if self._producer is None:
            # A reconnect waiting on its backoff is not a reason to give up: keep trying until the
            # deadline leaves no room for another attempt (then the rest stays in the spool).
            return not self._connect_fits_before_deadline(max(time.monotonic(), self._next_connect))
        return not self._inflight and not self.spool.pending

    def _finish(self) -> None:
        """Exit path: whatever is not acknowledged goes to the spool, then let go of everything."""
        while self._inflight and time.monotonic() < self._deadline and not self._abandoned:
            self._reap()
            time.sleep(0.005)
        self._spool_payloads([p for p, _, _ in self._inflight])
        self._inflight.clear()
        self._spool_items(self._drain_all())
        close_producer(self._producer, timeout=min(max(self._deadline - time.monotonic(), 0.0), 1.0))
        self._producer = None
        if self._orphan is not None:
            self._orphan.close()
            self._orphan = None
        if not self._abandoned:
            self.spool.close()


_FORK_KEEPALIVE: list[Any] = []
