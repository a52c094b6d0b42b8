"""The sender's side of the queue: take events off it, encode them, and append them to the rank's spool.

The training thread only appends to the queue; everything here runs on the
sender thread (or in ``close()`` once that thread is gone), so reading a
tensor, writing to disk or a full disk never reaches the training loop. A
failed spool write loses its batch: counted in ``counts["spool_errors"]``
(``stats["dropped_spool_error"]``) and logged once per episode of disk trouble.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from rankstream.errors import one_line
from rankstream.producer.events import EventEncoder
from rankstream.producer.spool import Spool

log = logging.getLogger("rankstream.producer")

# An event on the queue: (kind, step, ts, seq, metrics, tags, meta), built by the training thread.
QueuedEvent = tuple[str, int, float, int, Any, Any, Any]


def drain(queue: deque[QueuedEvent], limit: int) -> list[QueuedEvent]:
    """Up to ``limit`` of the oldest queued events (the only consumer is the calling thread)."""
    out: list[QueuedEvent] = []
    while queue and len(out) < limit:
        out.append(queue.popleft())
    return out


def drain_all(queue: deque[QueuedEvent]) -> list[QueuedEvent]:
    """Every queued event; safe against another thread taking the last one meanwhile."""
    out: list[QueuedEvent] = []
    while queue:
        try:
            out.append(queue.popleft())
        except IndexError:
            break
    return out


class SpoolWriter:
    """Encodes events and appends them to one spool, counting what was written and what a failing disk lost."""

    def __init__(self, encoder: EventEncoder, spool: Spool, counts: dict[str, int]) -> None:
        self.encoder = encoder
        self.spool = spool
        self.counts = counts  # the sender's counters: "spooled", "spool_errors"
        self.last_error = ""
        self._disk_trouble = False  # the last write failed (logged once per episode)

    def encode(self, events: list[QueuedEvent]) -> list[bytes]:
        out = []
        for event in events:
            try:
                out.append(self.encoder.encode(*event))
            except Exception as exc:  # pragma: no cover - encode() is total; belt and braces
                self.encoder.dropped_invalid += 1
                self.last_error = one_line(exc)
        return out

    def write_events(self, events: list[QueuedEvent]) -> None:
        self.write(self.encode(events))

    def write(self, payloads: list[bytes]) -> None:
        """Append ``payloads`` in order; never raises (a failed write is counted and logged)."""
        if not payloads:
            return
        try:
            self.spool.append(payloads)
        except Exception as exc:  # a full or failing disk
            self.counts["spool_errors"] += len(payloads)
            self.last_error = one_line(exc)
            if not self._disk_trouble:
                self._disk_trouble = True
                log.error(
                    "rankstream: cannot write spool %s (%s): events lost (counted in stats['dropped_spool_error'])",
                    self.spool.dir,
                    self.last_error,
                )
            return
        self.counts["spooled"] += len(payloads)
        if self._disk_trouble:
            self._disk_trouble = False
            log.info("rankstream: spool %s writable again", self.spool.dir)
