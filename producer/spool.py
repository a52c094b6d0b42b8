"""On-disk spool: where events wait while Kafka is unreachable or the memory queue is full.

Layout: ``<spool_dir>/<run>/rank-<r>/seg-00000001.log`` - append-only segment
files of newline-terminated wire messages, written with one ``write`` per batch
(a SIGKILL loses nothing the OS already has). ``seg-N.done`` records how many
bytes of a segment Kafka acknowledged, so a replay resumes where the last one
stopped (a crash between the ack and that record only causes duplicates, which
``seq`` makes detectable). A live reporter holds ``flock`` on ``lock``; the
kernel releases it when the process dies, which is how the next reporter or
``rankstream spool flush`` knows a directory is orphaned and safe to deliver
(:mod:`~rankstream.producer.merge` merges a run's ranks by time,
:mod:`~rankstream.producer.flush` is the command's delivery). The lock is only
ever tried, never waited for: a directory another live process holds (the
same run and rank started twice) makes the writer use its ``fallback``.

A failed write (a full disk: ENOSPC after a short write) is cut back to the
last whole message with ``ftruncate``, so the file never holds a torn line and
the byte counts kept here always equal the file; the caller counts the lost
batch. Only if that truncation fails too is the segment sealed (never appended
to again; reads stop at the recorded size).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from rankstream.errors import OperationFailed
from rankstream.schema import loads

log = logging.getLogger("rankstream.producer")

_SEG_RE = re.compile(r"^seg-(\d{8})\.log$")
READ_CHUNK_BYTES = 1 << 20
READ_CHUNK_EVENTS = 2000


class SpoolError(OperationFailed):
    """A spool operation that cannot proceed; the message is one line for the user."""


def run_dir_name(run_id: str) -> str:
    """A filesystem-safe, collision-free directory name for a run id."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:80]
    if safe == run_id:
        return safe
    return f"{safe}-{hashlib.blake2b(run_id.encode(), digest_size=4).hexdigest()}"


def rank_dir(base: str | Path, run_id: str, rank: int) -> Path:
    return Path(base) / run_dir_name(run_id) / f"rank-{rank}"


@dataclass(frozen=True)
class Chunk:
    """Consecutive spooled messages of one segment, ``[start, end)`` in bytes."""

    segment: int
    start: int
    end: int
    payloads: list[bytes]


class Spool:
    """One (run, rank) spool directory. Thread-safe; the owner holds its flock."""

    def __init__(self, directory: str | Path, max_bytes: int = 1024 << 20, fallback: str | Path | None = None) -> None:
        self.dir = Path(directory)
        self.fallback = Path(fallback) if fallback is not None else None
        self.max_bytes = max(int(max_bytes), 4096)
        self.segment_bytes = min(max(self.max_bytes // 8, 64 << 10), 16 << 20)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._loaded = False
        self._sizes: dict[int, int] = {}  # bytes on disk per segment
        self._lines: dict[int, int] = {}  # messages per segment
        self._done: dict[int, tuple[int, int]] = {}  # (bytes, messages) acknowledged per segment
        self._writer: tuple[int, int] | None = None  # (segment, fd) being appended to
        self._sealed: set[int] = set()  # segments whose torn tail could not be cut off: never appended to
        self.dropped = 0  # messages dropped because the spool hit its cap
        self._warned_full = False
        self._warned_progress = False

    # ---------------------------------------------------------------- ownership

    def acquire(self, blocking: bool = False) -> bool:
        """Create the directory and take its lock; False when another live process holds it."""
        with self._lock:
            if self._lock_fd is not None:
                return True
            self.dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError:
                os.close(fd)
                return False
            self._lock_fd = fd
            self._load()
            return True

    @property
    def owned(self) -> bool:
        return self._lock_fd is not None

    def close(self, remove_if_empty: bool = True) -> None:
        """Close files and release the lock; remove the directory when nothing is left in it."""
        with self._lock:
            self._close_writer()
            if remove_if_empty and self._lock_fd is not None and self.pending == 0:
                for seg in list(self._sizes):
                    self._delete_segment(seg)
                with contextlib.suppress(OSError):
                    (self.dir / "lock").unlink()
                with contextlib.suppress(OSError):
                    self.dir.rmdir()
                with contextlib.suppress(OSError):
                    self.dir.parent.rmdir()  # the run directory, once its last rank is gone
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._lock_fd)
                self._lock_fd = None

    def forget_after_fork(self) -> None:
        """In a forked child: drop inherited descriptors without touching the parent's lock or files."""
        self._lock = threading.RLock()
        for fd in (self._lock_fd, self._writer[1] if self._writer else None):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's descriptor stays open: its flock and file remain
        self._lock_fd = None
        self._writer = None

    # ---------------------------------------------------------------- state

    def _seg_path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:08d}.log"

    def _done_path(self, seg: int) -> Path:
        return self.dir / f"seg-{seg:08d}.done"

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for entry in sorted(os.listdir(self.dir)):
            m = _SEG_RE.match(entry)
            if not m:
                continue
            seg = int(m.group(1))
            data = (self.dir / entry).read_bytes()
            end = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is not a message
            done_bytes = 0
            with contextlib.suppress(OSError, ValueError):
                done_bytes = min(int(self._done_path(seg).read_text().strip() or 0), end)
            self._sizes[seg] = end
            self._lines[seg] = data.count(b"\n", 0, end)
            self._done[seg] = (done_bytes, data.count(b"\n", 0, done_bytes))
            if end < len(data):
                log.warning("rankstream: spool %s ends in a partial message (killed mid-write): ignored", entry)

    @property
    def pending(self) -> int:
        """Messages spooled and not yet acknowledged by Kafka."""
        with self._lock:
            return sum(self._lines[s] - self._done[s][1] for s in self._lines)

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return sum(self._sizes.values())

    # ---------------------------------------------------------------- writing

    def _close_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                os.close(self._writer[1])
            self._writer = None

    def _open_writer(self) -> int:
        if (
            self._writer is not None
            and self._sizes.get(self._writer[0], 0) < self.segment_bytes
            and self._writer[0] not in self._sealed
        ):
            return self._writer[1]
        self._close_writer()
        seg = max(self._sizes, default=0) + 1
        fd = os.open(self._seg_path(seg), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._sizes[seg], self._lines[seg], self._done[seg] = 0, 0, (0, 0)
        self._writer = (seg, fd)
        return fd

    def append(self, payloads: list[bytes]) -> None:
        """Append messages (each one line of JSON); drops the oldest segments beyond the cap."""
        if not payloads:
            return
        data = b"\n".join(payloads) + b"\n"
        with self._lock:
            if self._lock_fd is None:
                self._take_ownership()
            self._enforce_cap(len(data))
            fd = self._open_writer()
            seg = self._writer[0] if self._writer else 0
            view = memoryview(data)
            try:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            except OSError:
                self._cut_torn_tail(seg, fd)
                raise
            self._sizes[seg] += len(data)
            self._lines[seg] += len(payloads)

    def _take_ownership(self) -> None:
        """Lock our directory without waiting; when another live process holds it, switch to the fallback."""
        if self.acquire(blocking=False):
            return
        if self.fallback is not None:
            log.warning(
                "rankstream: spool %s is held by another live process (same run and rank twice?): using %s",
                self.dir,
                self.fallback,
            )
            self.dir, self.fallback = self.fallback, None
            self._loaded = False
            if self.acquire(blocking=False):
                return
        raise SpoolError(f"spool directory {self.dir} is locked by another live process")

    def _cut_torn_tail(self, seg: int, fd: int) -> None:
        """After a failed write: truncate the segment back to its last whole message (or seal it)."""
        try:
            os.ftruncate(fd, self._sizes[seg])
        except OSError:
            self._sealed.add(seg)
            self._close_writer()

    def _enforce_cap(self, incoming: int) -> None:
        while self._sizes and sum(self._sizes.values()) + incoming > self.max_bytes:
            oldest = min(self._sizes)
            lost = self._lines[oldest] - self._done[oldest][1]
            if self._writer is not None and self._writer[0] == oldest:
                self._close_writer()
            self._delete_segment(oldest)
            self.dropped += lost
            if lost and not self._warned_full:
                self._warned_full = True
                log.warning(
                    "rankstream: spool %s is full (cap %d MB): dropping the oldest events (counted; warned once)",
                    self.dir,
                    self.max_bytes >> 20,
                )

    def _delete_segment(self, seg: int) -> None:
        for path in (self._seg_path(seg), self._done_path(seg)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._sizes.pop(seg, None)
        self._lines.pop(seg, None)
        self._done.pop(seg, None)
        self._sealed.discard(seg)

    # ---------------------------------------------------------------- replay

    def read(self, max_events: int = READ_CHUNK_EVENTS, max_bytes: int = READ_CHUNK_BYTES) -> Chunk | None:
        """The oldest unacknowledged messages (at most one segment's worth), or None when empty."""
        with self._lock:
            for seg in sorted(self._sizes):
                done_bytes, _ = self._done[seg]
                size = self._sizes[seg]
                if done_bytes >= size:
                    if self._writer is None or self._writer[0] != seg:
                        self._delete_segment(seg)
                    continue
                with open(self._seg_path(seg), "rb") as f:
                    f.seek(done_bytes)
                    data = f.read(min(size - done_bytes, max_bytes))
                lines = data.split(b"\n")
                if len(lines) > 1:
                    lines.pop()  # after the last newline: the rest of the next message
                else:
                    # a single message longer than max_bytes: read it whole
                    with open(self._seg_path(seg), "rb") as f:
                        f.seek(done_bytes)
                        lines = [f.read(size - done_bytes).split(b"\n", 1)[0]]
                lines = lines[:max_events]
                end = done_bytes + sum(len(line) + 1 for line in lines)
                return Chunk(seg, done_bytes, end, lines)
            return None

    def commit(self, chunk: Chunk) -> None:
        """Record that Kafka acknowledged ``chunk``; delete segments that are fully delivered."""
        with self._lock:
            if chunk.segment not in self._sizes or self._done[chunk.segment][0] != chunk.start:
                return  # dropped by the cap meanwhile, or committed already
            done_lines = self._done[chunk.segment][1] + len(chunk.payloads)
            self._done[chunk.segment] = (chunk.end, done_lines)
            if chunk.end >= self._sizes[chunk.segment]:
                if self._writer is not None and self._writer[0] == chunk.segment:
                    self._close_writer()
                self._delete_segment(chunk.segment)
                return
            tmp = self._done_path(chunk.segment).with_suffix(".done.tmp")
            try:
                tmp.write_text(str(chunk.end))
                os.replace(tmp, self._done_path(chunk.segment))
            except OSError as exc:  # a full disk: the acknowledgement stays in memory; a crash resends (duplicates)
                if not self._warned_progress:
                    self._warned_progress = True
                    log.warning("rankstream: cannot record delivery progress in %s: %s (warned once)", self.dir, exc)


# --------------------------------------------------------------------- discovery


def spool_dirs(root: str | Path) -> list[Path]:
    """Every directory under ``root`` (itself included) holding spool segments, oldest name first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = {p.parent for p in root.rglob("seg-*.log")}
    return sorted(found)


def message_key(payload: bytes) -> bytes | None:
    """The Kafka key (run_id) of a spooled message, or None when the line is corrupt."""
    try:
        run_id = loads(payload).get("run_id")
    except (ValueError, TypeError, AttributeError):
        return None
    return run_id.encode() if isinstance(run_id, str) and run_id else None


def spool_summary(spool_dir: str | Path) -> list[tuple[Path, int, int, bool]]:
    """(directory, pending events, bytes, owned by a live process) for each spool under ``spool_dir``."""
    out = []
    for directory in spool_dirs(spool_dir):
        spool = Spool(directory)
        live = not spool.acquire(blocking=False)
        if live:
            out.append((directory, _count_pending_unlocked(directory), _dir_bytes(directory), True))
        else:
            out.append((directory, spool.pending, spool.size_bytes, False))
            spool.close(remove_if_empty=False)
    return out


def _dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("seg-*.log"))


def _count_pending_unlocked(directory: Path) -> int:
    """Read-only count for a spool another process owns (may be slightly stale)."""
    spool = Spool(directory)
    spool._load()
    return spool.pending
