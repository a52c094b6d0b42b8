"""The per-rank event rate limit, decided by step number so that every rank keeps the same steps.

A token bucket per rank drops whichever steps happen to find it empty: ranks
drop different steps and few steps arrive complete from all ranks (a 4-rank
job at 100 steps/s kept 96 of 300 aligned steps). Here a step is kept iff its
number is a multiple of a *stride*, and the stride is a function of step
numbers and of a step rate that all ranks of a synchronous job measure almost
identically:

* The stride ``S`` is a power of two; step ``s`` (after ``every_k``) is kept
  iff ``(s // every_k) % S == 0``. The phase is the absolute step number, so
  ranks agree on the kept steps whenever they agree on ``S``; and strides that
  differ are nested (every multiple of 8 is a multiple of 4), so if two ranks
  ever disagree, every step the coarser one keeps is still kept by all.
* ``S`` is decided again every ``DECIDE_EVERY_EVENTS`` kept events, i.e. at the
  first logged step at or after a multiple of ``DECIDE_EVERY_EVENTS * S``
  (counted from where the window started): the same step on every rank. The
  window spans about ``DECIDE_EVERY_EVENTS / max_events_per_s`` seconds
  whatever the step rate, long against the millisecond skew of step ends.
* The new ``S`` is the power of two *nearest* (in log scale) to the measured
  steps per second over ``max_events_per_s``. The thresholds sit at
  ``sqrt(2) * 2**n``, away from the round ratios jobs tend to have (exactly
  2x the limit keeps every 2nd step on every rank, where ``S = ceil(..)``
  would put the decision on a knife edge). So the rate kept is within a
  factor sqrt(2) of ``max_events_per_s``, not a hard cap.
* Before the first decision the stride is 1 (at most ``DECIDE_EVERY_EVENTS``
  events at the start, like a token bucket's burst).
* A long window at a large stride would hide a sudden slowdown for a long
  time, so every ``CHECK_EVERY_STEPS`` reported steps (again shared step
  numbers) the rate since the last check is measured too; only a steep drop
  (the stride it calls for is a quarter of the current one or less) acts
  before the window ends. The margin keeps that check away from knife edges.

Pure: the caller passes the clock reading; nothing here sleeps, locks or allocates on the common path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DECIDE_EVERY_EVENTS = 64
CHECK_EVERY_STEPS = 64  # reported-step interval of the early check for a steep slowdown
STEEP_SLOWDOWN = 4  # the early check lowers the stride only to at most a quarter of it


class StepStride:
    """Keeps steps at a power-of-two stride chosen from the observed step rate; identical on every rank."""

    __slots__ = (
        "_check_index",
        "_check_t",
        "_decide_at",
        "_next",
        "_window_index",
        "_window_t",
        "clock",
        "every_k",
        "rate",
        "stride",
    )

    def __init__(self, max_events_per_s: float, every_k: int = 1, clock: Callable[[], float] | None = None) -> None:
        self.rate = float(max_events_per_s)
        self.every_k = max(int(every_k), 1)
        self.clock = clock if clock is not None else time.monotonic
        self.stride = 1
        self._window_index = -1  # reported-step index (step // every_k) where the measurement window starts
        self._window_t = 0.0
        self._check_index = -1
        self._check_t = 0.0
        self._decide_at = 0
        self._next = 0  # the next index with work to do: min(next check, _decide_at)

    def keep(self, step: int) -> bool:
        """True when ``step`` (already past ``every_k``) is to be reported."""
        index = step // self.every_k
        if index >= self._next or index < self._window_index:
            self._update(index)
        return index % self.stride == 0

    def _update(self, index: int) -> None:
        now = self.clock()
        if self._window_index < 0 or index < self._window_index:
            self._start_window(index, now)  # the first step, or a step number going back: the stride is kept
        elif index >= self._decide_at:
            self.stride = stride_for(_rate(index - self._window_index, now - self._window_t), self.rate)
            self._start_window(index, now)
        else:
            # Between two decisions, only a steep slowdown acts early: a large stride at a much lower
            # step rate would otherwise report almost nothing until its long window ends.
            slower = stride_for(_rate(index - self._check_index, now - self._check_t), self.rate)
            if slower <= self.stride // STEEP_SLOWDOWN:
                self.stride = slower
                self._start_window(index, now)
            else:
                self._check_index, self._check_t = index, now
                self._next = min(_next_multiple(index, CHECK_EVERY_STEPS), self._decide_at)

    def _start_window(self, index: int, now: float) -> None:
        self._window_index = self._check_index = index
        self._window_t = self._check_t = now
        self._decide_at = _next_multiple(index, DECIDE_EVERY_EVENTS * self.stride)
        self._next = min(_next_multiple(index, CHECK_EVERY_STEPS), self._decide_at)


def _next_multiple(index: int, period: int) -> int:
    """The first multiple of ``period`` at least half a period after ``index`` (never a too short window)."""
    return ((index + period // 2) // period + 1) * period


def _rate(steps: int, elapsed: float) -> float:
    return steps / elapsed if elapsed > 0 else math.inf


def stride_for(steps_per_s: float, max_events_per_s: float) -> int:
    """The power of two nearest (in log scale) to ``steps_per_s / max_events_per_s``; at least 1."""
    if not max_events_per_s > 0:
        return 1
    ratio = steps_per_s / max_events_per_s
    if ratio == math.inf:
        return 1 << 20
    if not ratio > math.sqrt(2.0):
        return 1
    return 1 << min(round(math.log2(ratio)), 20)
