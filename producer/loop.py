"""Plain training loops: time each step's data wait and compute, and report them with the metrics.

::

    timer = StepTimer(Reporter(meta={...}))
    for step, batch in enumerate(loader):          # the wait for ``batch`` is data time
        with timer.step(step) as s:
            loss = train_step(batch)
            s.log(loss=loss)
    timer.close()

Data time is the gap between the previous step's end and this step's start
(the ``for`` fetching the batch), plus the time until ``s.data_done()`` if
the batch is fetched inside the block. Compute time runs from there to
``s.compute_done()`` or the end of the block. All are host-side wall times:
with CUDA, pass ``cuda_sync=True`` to wait for the GPU at the end of each
step (an explicit sync you asked for), otherwise queued kernels finish later.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from rankstream.producer.reporter import Reporter

_clock = time.perf_counter


class StepContext:
    """One step: collects metrics and marks; reports on exit."""

    __slots__ = (
        "_compute_mark",
        "_data_mark",
        "_enter",
        "_gap",
        "_metrics",
        "_tags",
        "_timer",
        "compute_time_s",
        "data_time_s",
        "step",
        "step_time_s",
    )

    def __init__(self, timer: StepTimer, step: int) -> None:
        self._timer = timer
        self.step = step
        self._metrics: dict[str, Any] = {}
        self._tags: dict[str, Any] | None = None
        self._enter = 0.0
        self._gap = 0.0
        self._data_mark: float | None = None
        self._compute_mark: float | None = None
        self.data_time_s = 0.0
        self.compute_time_s = 0.0
        self.step_time_s = 0.0

    def __enter__(self) -> StepContext:
        self._enter = _clock()
        last_end = self._timer._last_end
        self._gap = self._enter - last_end if last_end is not None else 0.0
        return self

    def data_done(self) -> None:
        """The batch is ready (call it when the batch is fetched inside the ``with`` block)."""
        self._data_mark = _clock()

    def compute_done(self) -> None:
        """Own forward/backward finished; what follows (e.g. waiting in an all-reduce) is not compute."""
        self._compute_mark = _clock()

    def log(
        self, metrics: Mapping[str, Any] | None = None, *, tags: Mapping[str, Any] | None = None, **kw: Any
    ) -> None:
        """Add metrics (and tags) to this step's event."""
        if metrics:
            self._metrics.update(metrics)
        if kw:
            self._metrics.update(kw)
        if tags:
            self._tags = {**(self._tags or {}), **tags}

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        timer = self._timer
        if timer.cuda_sync:
            timer._synchronize()
        end = _clock()
        data_end = self._data_mark if self._data_mark is not None else self._enter
        compute_end = self._compute_mark if self._compute_mark is not None else end
        self.data_time_s = self._gap + (data_end - self._enter)
        self.compute_time_s = max(compute_end - data_end, 0.0)
        self.step_time_s = self._gap + (end - self._enter)
        timer._last_end = end
        if exc_type is not None:
            return  # a failed step is not a completed step; the exception propagates
        metrics = self._metrics
        metrics["data_time_s"] = self.data_time_s
        metrics["compute_time_s"] = self.compute_time_s
        metrics["step_time_s"] = self.step_time_s
        timer.reporter.log(self.step, metrics, tags=self._tags)


class StepTimer:
    """Measures per-step data, compute and step time and reports them through a :class:`Reporter`."""

    def __init__(self, reporter: Reporter | None = None, *, cuda_sync: bool = False, **reporter_kwargs: Any) -> None:
        self.reporter = reporter if reporter is not None else Reporter(**reporter_kwargs)
        self.cuda_sync = cuda_sync
        self._last_end: float | None = None

    def step(self, step: int) -> StepContext:
        return StepContext(self, step)

    def reset(self) -> None:
        """Forget the previous step's end (e.g. after evaluation, so its time is not counted as data time)."""
        self._last_end = None

    def _synchronize(self) -> None:
        torch = sys.modules.get("torch")
        try:
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        except Exception:
            pass

    def close(self, timeout: float = 10.0, status: str = "finished", reason: str | None = None) -> None:
        self.reporter.close(timeout=timeout, status=status, reason=reason)

    def __enter__(self) -> StepTimer:
        self.reporter.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.close(status="failed", reason=exc_type.__name__)
