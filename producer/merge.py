"""Several ranks' spools delivered as one stream in event-time order (a k-way merge by ``ts``).

Delivering one rank's backlog after another makes the first rank run far ahead
of the others downstream (the aligner sees partial steps and lagging ranks that
were never late). Merging by ``ts`` delivers the ranks' events the way they
were produced. Each spool's own order is kept as written (seq order; a rank
whose clock stepped back is never reordered), so the delivered ``ts`` are
non-decreasing event by event wherever each spool's are.

Memory is bounded: one chunk per spool (``chunk_bytes``, at most
``MERGE_MEMORY_BYTES`` for all the spools of a merge together, at least
``MIN_CHUNK_BYTES`` each). A batch ends when a spool's chunk is used up (it is
read again only after the batch was acknowledged and committed).
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from rankstream.producer.spool import READ_CHUNK_BYTES, READ_CHUNK_EVENTS, Chunk, Spool, spool_dirs
from rankstream.schema import loads

log = logging.getLogger("rankstream.producer")

MERGE_MEMORY_BYTES = 64 << 20
MIN_CHUNK_BYTES = 16 << 10

Record = tuple[bytes, bytes]  # (Kafka key = run_id, wire message)


def chunk_bytes_for(spools: int) -> int:
    """Bytes read per spool so that a merge of ``spools`` holds at most ~MERGE_MEMORY_BYTES."""
    return max(min(MERGE_MEMORY_BYTES // max(spools, 1), READ_CHUNK_BYTES), MIN_CHUNK_BYTES)


def _parse(payload: bytes) -> tuple[float, bytes | None]:
    """(ts, key) of a spooled message; a corrupt line gets ts -inf (skipped at once) and no key."""
    try:
        event = loads(payload)
        run_id, ts = event.get("run_id"), event.get("ts")
    except (ValueError, TypeError, AttributeError):
        return -math.inf, None
    key = run_id.encode() if isinstance(run_id, str) and run_id else None
    return (float(ts) if isinstance(ts, int | float) and key is not None else -math.inf), key


@dataclass
class _Cursor:
    """One spool's chunk in memory: ``taken`` messages are in the current batch, ``committed`` are acknowledged."""

    spool: Spool
    chunk: Chunk | None = None
    parsed: list[tuple[float, bytes | None]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)  # byte offset after each message (ends[0] = chunk start)
    taken: int = 0
    committed: int = 0

    @property
    def used_up(self) -> bool:
        return self.committed >= len(self.parsed)

    def load(self, chunk: Chunk) -> None:
        self.chunk = chunk
        self.parsed = [_parse(p) for p in chunk.payloads]
        self.ends = list(accumulate((len(p) + 1 for p in chunk.payloads), initial=chunk.start))
        self.taken = self.committed = 0


class SpoolMerge:
    """A k-way merge by ``ts`` over locked spools (one run's ranks); closes them when done."""

    def __init__(self, spools: Sequence[Spool], chunk_bytes: int | None = None) -> None:
        self.spools = list(spools)
        self.chunk_bytes = chunk_bytes if chunk_bytes is not None else chunk_bytes_for(len(self.spools))
        self.corrupt = 0  # unreadable lines skipped (and committed)
        self._cursors = [_Cursor(s) for s in self.spools]

    @property
    def pending(self) -> int:
        return sum(s.pending for s in self.spools)

    def next_batch(self, max_events: int = READ_CHUNK_EVENTS) -> list[Record] | None:
        """The next records in merged order (maybe empty when only corrupt lines were passed); None when drained.

        Call :meth:`commit` once Kafka acknowledged them, :meth:`rewind` when it did not.
        """
        self._refill()
        if not self._cursors:
            return None
        heap = [(c.parsed[c.taken][0], i) for i, c in enumerate(self._cursors) if c.taken < len(c.parsed)]
        heapq.heapify(heap)
        out: list[Record] = []
        while heap and len(out) < max_events:
            _, i = heapq.heappop(heap)
            cursor = self._cursors[i]
            assert cursor.chunk is not None
            _, key = cursor.parsed[cursor.taken]
            if key is None:
                self.corrupt += 1
                log.warning("rankstream: corrupt spooled message in %s skipped", cursor.spool.dir)
            else:
                out.append((key, cursor.chunk.payloads[cursor.taken]))
            cursor.taken += 1
            if cursor.taken >= len(cursor.parsed):
                break  # its next chunk is readable only once this batch is committed
            heapq.heappush(heap, (cursor.parsed[cursor.taken][0], i))
        return out

    def commit(self) -> None:
        """Kafka acknowledged the last batch: record each spool's delivered prefix on disk."""
        for c in self._cursors:
            if c.chunk is not None and c.taken > c.committed:
                payloads = c.chunk.payloads[c.committed : c.taken]
                c.spool.commit(Chunk(c.chunk.segment, c.ends[c.committed], c.ends[c.taken], payloads))
                c.committed = c.taken

    def rewind(self) -> None:
        """The last batch was not acknowledged: deliver it again next time."""
        for c in self._cursors:
            c.taken = c.committed

    def close(self) -> None:
        for spool in self.spools:
            spool.close()

    def _refill(self) -> None:
        live = []
        for c in self._cursors:
            if c.chunk is None or c.used_up:
                chunk = c.spool.read(max_bytes=self.chunk_bytes)
                if chunk is None:
                    continue  # this spool is drained
                c.load(chunk)
            live.append(c)
        self._cursors = live


def orphan_runs(root: str | Path, exclude: Path | None = None, max_bytes: int = 1 << 40) -> Iterator[list[Spool]]:
    """The orphaned spools under ``root``, one list per run directory (its ranks), each locked for the caller.

    Spools a live process owns (and ``exclude``) are left out; a run is locked
    only when the walk reaches it.
    """
    groups: dict[Path, list[Path]] = {}
    for directory in spool_dirs(root):
        groups.setdefault(directory.parent, []).append(directory)
    skip = exclude.resolve() if exclude is not None else None
    for members in groups.values():
        locked = []
        for directory in members:
            if skip is not None and directory.resolve() == skip:
                continue
            spool = Spool(directory, max_bytes=max_bytes)
            try:
                if spool.acquire(blocking=False):
                    locked.append(spool)
            except OSError:
                continue
        if locked:
            yield locked
