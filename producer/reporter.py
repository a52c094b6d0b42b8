"""The training-loop facing object: ``Reporter.log`` is the hot path, everything else is background.

``log`` copies the metric references into a tuple, stamps ``ts`` and ``seq``
and appends it to a deque: no serialization, no I/O, no lock, no torch call,
in every path (a full queue included: the sender thread spools the oldest).
The rate limit is a step stride every rank computes alike
(:mod:`~rankstream.producer.ratelimit`). The
:class:`~rankstream.producer.sender.Sender` thread does the rest; a
heartbeat thread keeps a rank visibly alive while it sits in a collective.
Each reporter is one *incarnation* (``inc``) of its rank: a relaunch under the
same run id counts ``seq`` from 0 again under a new ``inc``. How the process
ends (close, exit, an uncaught exception, SIGTERM/SIGINT) is ``run_end``'s
``reason``; see :mod:`rankstream.producer.shutdown` for the signal handlers.
"""

from __future__ import annotations

import atexit
import logging
import math
import operator
import os
import secrets
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rankstream.config import Settings
from rankstream.producer.events import EventEncoder
from rankstream.producer.identity import RunIdentity, detect_identity
from rankstream.producer.ratelimit import StepStride
from rankstream.producer.redact import redact_meta
from rankstream.producer.sender import Sender
from rankstream.producer.shutdown import NORMAL, install, signal_name, uncaught_exception_reason
from rankstream.producer.spool import Spool, rank_dir
from rankstream.producer.transport import Transport
from rankstream.topology import validate_topology

log = logging.getLogger("rankstream.producer")

# Strong references until close(): an unclosed reporter must still be flushed at exit.
_REPORTERS: set[Reporter] = set()
ATEXIT_TIMEOUT_S = 5.0
SHUTDOWN_TIMEOUT_S = 5.0  # on SIGTERM/SIGINT: torchrun and SLURM wait ~30 s before SIGKILL
SEQ_LIMIT = sys.maxsize  # seqs a reporter can hand out
# Events waiting in memory beyond which log() drops (counted): the sender thread is stuck, not merely behind
# (it spools everything beyond queue_size). Bounds the memory (and CUDA tensors) a stuck sender can pin.
HARD_QUEUE_FACTOR = 10
HARD_QUEUE_MIN = 100_000
LIFECYCLE_KINDS = frozenset({"run_start", "run_end"})


class Reporter:
    """Publishes this rank's events of one run. One per process (per rank)."""

    def __init__(
        self,
        run_id: str | None = None,
        *,
        settings: Settings | None = None,
        meta: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        local_rank: int | None = None,
        heartbeat_s: float = 10.0,
        every_k: int = 1,
        max_events_per_s: float = 50.0,
        queue_size: int = 10000,
        spool_dir: str | Path | None = None,
        spool_max_mb: int = 1024,
        transport: Transport | None = None,
        handle_signals: bool = True,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        topology: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.identity: RunIdentity = detect_identity(run_id, rank=rank, world_size=world_size, local_rank=local_rank)
        self.meta = redact_meta(meta)
        self.heartbeat_s = float(heartbeat_s)
        self.every_k = max(int(every_k), 1)
        rate = float(max_events_per_s) if max_events_per_s else 0.0
        self._stride = StepStride(rate, self.every_k) if 0.0 < rate < math.inf else None
        self._queue_size = max(int(queue_size), 1)
        self._hard_limit = max(self._queue_size * HARD_QUEUE_FACTOR, HARD_QUEUE_MIN)
        ident = self.identity
        self.spool_root = Path(spool_dir) if spool_dir is not None else self.settings.spool_path
        self.inc = secrets.token_hex(6)  # this process start of this rank: seq counts from 0 per inc
        own_dir = rank_dir(self.spool_root, ident.run_id, ident.rank)
        self.spool = Spool(
            own_dir, max_bytes=int(spool_max_mb) << 20, fallback=own_dir.with_name(f"{own_dir.name}-{self.inc}")
        )
        self._encoder = EventEncoder(
            ident.run_id, ident.rank, ident.world_size, ident.local_rank, ident.host, inc=self.inc
        )
        if topology:  # sharded / 3D-parallel layout (rankstream.producer.topology), sent with run_start
            self._encoder.topology = validate_topology(dict(topology))
        self._sender = Sender(
            self.settings,
            self._encoder,
            self.spool,
            self.spool_root,
            key=ident.run_id.encode(),
            client_id=f"rankstream-{ident.rank}",
            transport=transport,
            queue_size=self._queue_size,
        )
        self._queue = self._sender.queue
        # The training thread and the heartbeat thread both draw seqs: next() on a range iterator is one
        # atomic C call (no lock, no read-modify-write race), and its length_hint says how many were drawn.
        self._seq = iter(range(SEQ_LIMIT))
        self._last_step = -1
        self._started = False
        self._closed = False
        self._disabled = False  # closed, or a forked child: log() is a no-op
        self._owner_pid = os.getpid()
        self._hb_stop = threading.Event()
        self._hb_thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._counts = {
            "skipped_every_k": 0,
            "rate_limited": 0,
            "bad_calls": 0,
            "forked_calls": 0,
            "dropped_queue_full": 0,
        }
        self._warned: set[str] = set()
        self.shutdown_timeout_s = max(float(shutdown_timeout_s), 0.0)
        self.handle_signals = bool(handle_signals)
        _REPORTERS.add(self)
        if self.handle_signals:
            install(_close_on_signal)

    # ------------------------------------------------------------------ identity

    @property
    def run_id(self) -> str:
        return self.identity.run_id

    @property
    def rank(self) -> int:
        return self.identity.rank

    @property
    def world_size(self) -> int:
        return self.identity.world_size

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Reporter:
        """Emit run_start and start the background threads (idempotent; log() calls it)."""
        if self._started or self._disabled:
            return self
        with self._start_lock:
            if self._started:
                return self
            self._emit("run_start", -1, None, None, self.meta)
            self._sender.start()
            if self.heartbeat_s > 0:
                self._hb_thread = threading.Thread(target=self._heartbeat, name="rankstream-heartbeat", daemon=True)
                self._hb_thread.start()
            self._started = True
        return self

    def close(self, timeout: float = 10.0, status: str = "finished", reason: str | None = None) -> None:
        """Emit run_end, deliver within ``timeout`` seconds; what is left stays spooled.

        ``reason`` (run_end tag) says why the run ended: ``normal`` by default for
        status ``finished``, ``unknown`` for another status; the exit paths pass
        the signal or exception type name.
        """
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        self._disabled = True
        self._hb_stop.set()
        if self._started:
            step = self._last_step if self._last_step >= 0 else -1
            if reason is None:
                reason = NORMAL if status == "finished" else "unknown"
            self._emit("run_end", step, None, {"status": str(status), "reason": str(reason)}, None)
        self._sender.close(timeout)
        if self._hb_thread is not None:
            self._hb_thread.join(1.0)
        _REPORTERS.discard(self)

    def __enter__(self) -> Reporter:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "failed" if exc_type is not None and exc_type is not KeyboardInterrupt else "finished"
        self.close(status=status, reason=exc_type.__name__ if exc_type is not None else NORMAL)

    # ------------------------------------------------------------------ hot path

    def _emit(self, kind: str, step: int, metrics: Any, tags: Any, meta: Any) -> None:
        item = (kind, step, time.time(), next(self._seq), metrics, tags, meta)
        # Beyond queue_size the sender spools the oldest; only a stuck sender lets the queue reach the hard limit
        # (then the event is dropped, its seq a visible gap downstream; run_start and run_end never are).
        if len(self._queue) < self._hard_limit or kind in LIFECYCLE_KINDS:
            self._queue.append(item)
        else:
            self._counts["dropped_queue_full"] += 1

    def log(
        self,
        step: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        **metrics_kw: Any,
    ) -> None:
        """Report this rank's metrics of a completed optimizer step. Never raises, never blocks.

        Values are kept by reference and read on the background thread: pass
        floats, or tensors you will not modify in place (a CUDA tensor is read
        there, so the training thread never waits for the GPU).
        """
        if self._disabled:
            if self._closed:
                return
            self._counts["forked_calls"] += 1
            return
        try:
            if type(step) is not int or step < 0:
                coerced = self._coerce_step(step)
                if coerced is None:
                    return
                step = coerced
            self._last_step = step
            if not self._started:
                self.start()
            if self.every_k > 1 and step % self.every_k:
                self._counts["skipped_every_k"] += 1
                return
            if self._stride is not None and not self._stride.keep(step):
                self._counts["rate_limited"] += 1
                return
            if metrics_kw:
                if metrics:
                    merged = dict(metrics)
                    merged.update(metrics_kw)
                    metrics_kw = merged
            elif metrics:
                metrics_kw = dict(metrics)
            self._emit("step", step, metrics_kw, dict(tags) if tags else None, None)
        except Exception as exc:  # bad input from the training script never reaches the loop
            self._bad_call("log", exc)

    def log_eval(
        self,
        step: int,
        metrics: Mapping[str, Any] | None = None,
        *,
        tags: Mapping[str, Any] | None = None,
        **metrics_kw: Any,
    ) -> None:
        """Report evaluation metrics at ``step`` (not thinned by every_k or the rate limit)."""
        if self._disabled:
            return
        try:
            if type(step) is not int or step < 0:
                coerced = self._coerce_step(step)
                if coerced is None:
                    return
                step = coerced
            if not self._started:
                self.start()
            merged = dict(metrics) if metrics else {}
            merged.update(metrics_kw)
            self._emit("eval", step, merged, dict(tags) if tags else None, None)
        except Exception as exc:
            self._bad_call("log_eval", exc)

    def _coerce_step(self, step: Any) -> int | None:
        try:
            value = int(step)  # numpy ints, 0-d tensors
            if value != step or value < 0 or isinstance(step, bool):
                raise ValueError
        except Exception:
            self._bad_call("log", ValueError(f"step must be a non-negative integer, got {step!r:.40}"))
            return None
        return value

    def _bad_call(self, where: str, exc: BaseException) -> None:
        self._counts["bad_calls"] += 1
        if where not in self._warned:
            self._warned.add(where)
            log.warning("rankstream: %s() ignored bad input: %s (counted; warned once)", where, exc)

    # ------------------------------------------------------------------ background

    def _heartbeat(self) -> None:
        while not self._hb_stop.wait(self.heartbeat_s):
            if self._disabled:
                return
            self._emit("heartbeat", max(self._last_step, 0), None, None, None)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: enqueued, sent, spooled, replayed, dropped_invalid, dropped_spool_full, ..."""
        p = self._sender.counts
        return {
            "enqueued": SEQ_LIMIT - operator.length_hint(self._seq),
            "sent": p["sent"],
            "spooled": p["spooled"],
            "replayed": p["replayed"],
            "overflow_spooled": p["overflow"],
            "dropped_invalid": self._encoder.dropped_invalid,
            "dropped_spool_full": self.spool.dropped,
            "dropped_spool_error": p["spool_errors"],
            "dropped_queue_full": self._counts["dropped_queue_full"],
            "truncated": self._encoder.truncated,
            "skipped_every_k": self._counts["skipped_every_k"],
            "rate_limited": self._counts["rate_limited"],
            "rate_stride": self._stride.stride if self._stride is not None else 1,
            "bad_calls": self._counts["bad_calls"],
            "forked_calls": self._counts["forked_calls"],
            "queued": len(self._queue),
            "spool_pending": self.spool.pending,
            "connects": p["connects"],
            "connect_attempts": p["connect_attempts"],
            "send_failures": p["send_failures"],
            "producer_recreated": p["producer_recreated"],
        }

    # ------------------------------------------------------------------ fork / exit

    def _after_fork_in_child(self) -> None:
        self._disabled = True
        self._started = True
        self._hb_thread = None
        self._hb_stop = threading.Event()
        self._start_lock = threading.Lock()
        self._sender.after_fork_in_child()
        self._queue = self._sender.queue


def _after_fork_in_child() -> None:
    """A forked child (DataLoader worker) must not reuse the parent's threads, sockets or spool lock."""
    for reporter in list(_REPORTERS):
        try:
            reporter._after_fork_in_child()
        except Exception:  # pragma: no cover
            pass


def _close_at_exit() -> None:
    reason = uncaught_exception_reason()
    status = "failed" if reason is not None else "finished"
    pid = os.getpid()
    for reporter in list(_REPORTERS):
        if reporter._owner_pid == pid and not reporter._closed:
            try:
                reporter.close(timeout=ATEXIT_TIMEOUT_S, status=status, reason=reason or NORMAL)
            except Exception:  # pragma: no cover
                pass


def _close_on_signal(signum: int) -> None:
    """SIGTERM/SIGINT (main thread, between bytecodes): close this process's reporters, each once, bounded.

    A reporter already closing (the signal interrupted its close) is skipped:
    the signal then goes on at once, as a second Ctrl-C should.
    """
    reason = signal_name(signum)
    pid = os.getpid()
    for reporter in list(_REPORTERS):
        if reporter.handle_signals and reporter._owner_pid == pid and not reporter._closed:
            try:
                reporter.close(timeout=reporter.shutdown_timeout_s, status="terminated", reason=reason)
            except Exception as exc:  # pragma: no cover - the others still close, the signal still goes on
                log.error("rankstream: closing on %s failed: %s", reason, exc)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_at_exit)
