"""loss_rising and loss_plateau: the direction of the mean loss, whatever the run's logging cadence.

A run may be logged every step (Megatron), every 5-10 (ms-swift) or every 500
(HF Trainer's default), and HF and ms-swift log the mean loss of each interval.
So nothing here counts steps between points as if each were one: the EWMA
decays per step, windows span steps (and need a minimum of logged points),
and the plateau is a statistical statement (no significant decrease over a
stretch that grows with the run), not "improved by less than x %". Absence of
evidence is not evidence of a plateau, though: early in a run the stretch is
short and the noise large next to the descent it should show (1 healthy run in
120 at cadence 10 read as flat for 8 judgements in a row), so the stretch must
also have slowed down against the run's own average pace since its trend began.
"""

from __future__ import annotations

import math
from typing import Any

from rankstream.stream_jobs.core.alerts import Finding, StepContext, fmt
from rankstream.stream_jobs.core.params import LossPlateauParams, LossRisingParams
from rankstream.stream_jobs.core.trend import RollingKendall, StepBins, kendall_s, kendall_z, median_of, theil_sen

#: Bins of a plateau history: enough for a Mann-Kendall test over a quarter of it, small enough to test cheaply.
PLATEAU_BINS = 64
#: Bins the rising trend window needs before it is tested (a Mann-Kendall z over fewer cannot reach 3).
_MIN_TREND_BINS = 10
#: Bins a plateau stretch needs before it is judged.
_MIN_PLATEAU_BINS = 8
#: The first bins of the trend's history whose median is where the run's pace is measured from.
_PACE_HEAD_BINS = 3


def step_alpha(alpha: float, steps: int) -> float:
    """The EWMA weight of a point logged ``steps`` steps after the previous one (``alpha`` is per step)."""
    return 1.0 - (1.0 - alpha) ** steps if steps > 1 else alpha


class RisingRule:
    """loss_rising: the EWMA rose ``steps`` logged points in a row (clean climb), or the loss rises by a
    robust trend test over the last ``trend_points`` bins of ``trend_window_steps / trend_points`` steps
    (noisy climb: at least that many steps and that many logged points); by ``min_rel_rise`` either way."""

    def __init__(self, p: LossRisingParams) -> None:
        self.p = p
        self.ewma: float | None = None
        self.prev_step = -1
        self.count = 0
        self.start = 0.0
        #: The open bin of the trend window: [bin index, sum of points, number of points].
        self.bin: list[float] = [-1.0, 0.0, 0.0]
        self.window = RollingKendall(max(1, p.trend_points))

    @property
    def bin_steps(self) -> int:
        return max(1, self.p.trend_window_steps // max(1, self.p.trend_points))

    def reset(self) -> None:
        self.ewma = None
        self.count = 0
        self.bin = [-1.0, 0.0, 0.0]
        self.window.clear()

    def on_point(self, x: float, at: StepContext, found: list[Finding]) -> None:
        p = self.p
        prev = self.ewma
        gap = at.step - self.prev_step if prev is not None else 1
        self.prev_step = at.step
        ewma = x if prev is None else prev + step_alpha(p.ewma_alpha, gap) * (x - prev)
        self.ewma = ewma
        if at.warmup:
            self.count = 0
            self.bin = [-1.0, 0.0, 0.0]
            self.window.clear()
            return
        if prev is not None and ewma > prev:
            if self.count == 0:
                self.start = prev
            self.count += 1
        else:
            self.count = 0
        closed = self._bin(at.step, x)
        if not p.enabled:
            return
        if self.count >= p.steps:
            self._consecutive(ewma, at, found)
        elif closed and len(self.window) >= _MIN_TREND_BINS and self.window.z() >= p.trend_z:
            self._noisy(at, found)

    def _bin(self, step: int, x: float) -> bool:
        """Add ``x`` to the open bin; True when that closed the previous bin into the trend window."""
        width = self.bin_steps
        key = step // width
        cell = self.bin
        if key == cell[0]:
            cell[1] += x
            cell[2] += 1.0
            return False
        closed = cell[2] > 0
        if closed:
            if self.window.size != max(1, self.p.trend_points):
                self.window = RollingKendall(max(1, self.p.trend_points), self.window.to_list())
            self.window.add(cell[0] * width + (width - 1) / 2.0, cell[1] / cell[2])
        self.bin = [float(key), x, 1.0]
        return closed

    def _consecutive(self, ewma: float, at: StepContext, found: list[Finding]) -> None:
        start = self.start
        rel = (ewma - start) / abs(start) if start else math.inf
        if rel < self.p.min_rel_rise:
            return
        found.append(
            at.finding(
                "loss_rising",
                self.p.severity,
                message=f"Smoothed loss of {at.label} has risen for {self.count} consecutive logged points "
                f"(+{fmt(rel * 100)}% to {fmt(ewma)} at step {at.step}): training is going the wrong way, "
                "lower the learning rate or check recent data and config changes.",
                evidence={
                    "reading": "consecutive",
                    "consecutive_steps": self.count,  # logged points (the key predates cadences)
                    "loss_ewma": ewma,
                    "start_ewma": start,
                    "rise_rel": rel,
                },
            )
        )
        self.count = 0
        self.window.clear()

    def _noisy(self, at: StepContext, found: list[Finding]) -> None:
        w = self.window
        steps = list(w.steps)
        span = steps[-1] - steps[0] + self.bin_steps
        level = median_of(list(w.values))
        slope = w.slope()
        rel = slope * span / abs(level) if level else math.inf
        if rel < self.p.min_rel_rise:
            return
        z = w.z()
        found.append(
            at.finding(
                "loss_rising",
                self.p.severity,
                message=f"Loss of {at.label} is trending up through the noise over steps {int(steps[0])}-{at.step} "
                f"(+{fmt(rel * 100)}% by the Theil-Sen slope, Mann-Kendall z {fmt(z)} over {len(w)} points): "
                "training is going the wrong way, lower the learning rate or check recent data and config "
                "changes.",
                evidence={
                    "reading": "trend",
                    "points": len(w),
                    "window_steps": span,
                    "kendall_z": z,
                    "slope_per_step": slope,
                    "median_loss": level,
                    "rise_rel": rel,
                },
            )
        )
        self.count = 0
        w.clear()

    def to_state(self) -> dict[str, Any]:
        return {
            "ewma": self.ewma,
            "prev_step": self.prev_step,
            "count": self.count,
            "start": self.start,
            "bin": list(self.bin),
            "window": self.window.to_list(),
        }

    def load_state(self, s: dict[str, Any]) -> None:
        self.ewma = s.get("ewma")
        self.prev_step = int(s.get("prev_step", -1))
        self.count = int(s.get("count", 0))
        self.start = float(s.get("start", 0.0))
        self.bin = [float(v) for v in s.get("bin", [-1.0, 0.0, 0.0])]
        self.window = RollingKendall(max(1, self.p.trend_points), s.get("window", []))


class PlateauRule:
    """loss_plateau: over the last max(``patience`` steps, ``window_frac`` of the steps since the trend
    began) the mean loss shows no significant decrease (Mann-Kendall on step bins), and falls by less than
    ``pace_frac`` of the run's average pace since the trend began, at ``confirm`` judgements in a row; once
    per plateau (``confirm`` improving judgements in a row end it)."""

    def __init__(self, p: LossPlateauParams) -> None:
        self.p = p
        self.bins = StepBins(PLATEAU_BINS)
        #: Consecutive judgements that found no significant decrease, and that found one.
        self.flat = 0
        self.improving = 0
        self.fired = False

    def reset(self) -> None:
        self.bins.clear()
        self.flat = 0
        self.improving = 0
        self.fired = False

    def on_point(self, x: float, at: StepContext, found: list[Finding]) -> None:
        if at.warmup:
            self.reset()
            return
        bins = self.bins
        if not bins.add(at.step, x) or len(bins) <= _MIN_PLATEAU_BINS:
            return
        p = self.p
        began = bins.first_step()
        if at.step - began < p.patience:
            return
        stretch = max(float(p.patience), p.window_frac * (at.step - began))
        steps, means, points = bins.closed(at.step - stretch, p.min_points)
        n = len(means)
        if n < _MIN_PLATEAU_BINS or points < p.min_points:
            return
        stretch = at.step - steps[0] + bins.width / 2.0
        z = kendall_z(kendall_s(means), n)
        if z <= -p.z and not self.fired:
            self.flat = 0  # falling (how briskly only matters to end a plateau already reported)
            return
        slope = theil_sen(steps, means)
        level = median_of(means)
        pace = self._run_pace(steps, level)
        # Practically falling: at pace_frac of the run's own pace at least (any pace while it never fell).
        brisk = pace is None or -slope >= p.pace_frac * pace
        if z <= -p.z and brisk:
            self.flat = 0
            self.improving += 1
            if self.improving >= p.confirm:
                self.fired = False  # improving again for as long: a later plateau is a new one
            return
        if z <= -p.z or (brisk and pace is not None):
            # Either a significant but negligible decrease (noise over a long flat stretch: not the end of a
            # plateau), or a decrease at the run's pace that the stretch is too short or noisy to show
            # significantly (not a plateau): neither reading.
            self.flat = self.improving = 0
            return
        self.improving = 0
        self.flat += 1
        if self.flat < p.confirm or self.fired or not p.enabled:
            return
        self.fired = True
        per_100 = slope * 100 / abs(level) if level else 0.0
        found.append(
            at.finding(
                "loss_plateau",
                p.severity,
                message=f"Loss of {at.label} has not improved significantly over its last {fmt(stretch)} steps "
                f"(Mann-Kendall z {fmt(z)} over {points} logged points in {n} bins, Theil-Sen slope "
                f"{fmt(per_100 * 100)}% per 100 steps; "
                f"{fmt(means[0])} -> {fmt(means[-1])} at step {at.step}): consider stopping, changing the "
                "learning-rate schedule or checking that the data is not repeating.",
                evidence={
                    "window_steps": stretch,
                    "points": points,
                    "bins": n,
                    "kendall_z": z,
                    "slope_per_step": slope,
                    "first_mean": means[0],
                    "last_mean": means[-1],
                    "run_pace_per_step": pace,
                },
            )
        )

    def _run_pace(self, steps: list[float], level: float) -> float | None:
        """The run's average decrease per step from its first closed bins to the stretch (``steps``, median
        ``level``); None when the loss has not fallen (significantly) since the trend began: flat all along."""
        all_steps, all_means, _ = self.bins.closed(-math.inf)
        if kendall_z(kendall_s(all_means), len(all_means)) > -self.p.z:
            return None
        head = min(_PACE_HEAD_BINS, len(all_means))
        start_step = median_of(all_steps[:head])
        mid = (steps[0] + steps[-1]) / 2.0
        pace = (median_of(all_means[:head]) - level) / (mid - start_step) if mid > start_step else 0.0
        return pace if pace > 0.0 else None

    def to_state(self) -> dict[str, Any]:
        return {"bins": self.bins.to_state(), "flat": self.flat, "improving": self.improving, "fired": self.fired}

    def load_state(self, s: dict[str, Any]) -> None:
        self.bins = StepBins(PLATEAU_BINS, s.get("bins"))
        self.flat = int(s.get("flat", 0))
        self.improving = int(s.get("improving", 0))
        self.fired = bool(s.get("fired", False))
