"""Robust trend statistics for the loss rules: Mann-Kendall, Theil-Sen, and step-binned history.

A loss curve is noisy, logged at any cadence, and has outliers (one spike is
not a trend). Rank-based tests answer "is it going up / down?" without assuming
a noise model: Mann-Kendall's S counts the pairs that rise minus those that
fall, Theil-Sen's slope is the median of the pairwise slopes. Both are O(n^2)
over a window, so the hot path keeps S up to date in O(n) per point
(:class:`RollingKendall`) and the long-range history in at most ``max_bins``
bins of equal step width (:class:`StepBins`), tested only when a bin closes.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Any


def _sign(d: float) -> int:
    return (d > 0.0) - (d < 0.0)


def kendall_s(values: Sequence[float]) -> int:
    """Mann-Kendall S: pairs (i < j) with values[j] > values[i] minus those with values[j] < values[i]."""
    n = len(values)
    return sum(_sign(values[j] - values[i]) for i in range(n) for j in range(i + 1, n))


def kendall_z(s: int, n: int) -> float:
    """The normal score of S for ``n`` values (no ties correction, continuity-corrected); 0 for n < 3.

    Positive: rising, negative: falling; |z| >= 2.33 is one-sided p <= 0.01, 3.09 is p <= 0.001.
    """
    if n < 3 or s == 0:
        return 0.0
    var = n * (n - 1) * (2 * n + 5) / 18.0
    return (s - 1 if s > 0 else s + 1) / math.sqrt(var)


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The median of the pairwise slopes (ys per unit of xs); 0 with fewer than two distinct xs."""
    slopes = sorted(
        (ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    )
    if not slopes:
        return 0.0
    mid = len(slopes) // 2
    return slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2.0


def median_of(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


class RollingKendall:
    """The last ``size`` logged points ``(step, value)`` and their Mann-Kendall S, updated in O(size) per point."""

    def __init__(self, size: int, points: Sequence[Sequence[float]] = ()) -> None:
        self.size = size
        self.steps: deque[float] = deque(maxlen=size)
        self.values: deque[float] = deque(maxlen=size)
        for step, value in list(points)[-size:]:
            self.steps.append(step)
            self.values.append(value)
        self.s = kendall_s(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def add(self, step: float, value: float) -> None:
        values = self.values
        if len(values) == self.size:
            oldest = values[0]
            self.s -= sum(_sign(v - oldest) for v in values)  # the pairs the oldest point opened
        values_after = list(values)[1:] if len(values) == self.size else values
        self.s += sum(_sign(value - v) for v in values_after)
        self.steps.append(step)
        values.append(value)

    def clear(self) -> None:
        self.steps.clear()
        self.values.clear()
        self.s = 0

    def z(self) -> float:
        return kendall_z(self.s, len(self.values))

    def slope(self) -> float:
        """Theil-Sen slope per step over the window."""
        return theil_sen(list(self.steps), list(self.values))

    def to_list(self) -> list[list[float]]:
        return [[s, v] for s, v in zip(self.steps, self.values, strict=True)]


class StepBins:
    """A value's history since a reset as at most ``max_bins`` means over bins of equal step width.

    The width starts at one step and doubles (neighbouring bins merge) whenever more than ``max_bins``
    bins hold points, so the whole history fits in bounded state whatever the run's length or its
    logging cadence; a bin holds the mean of however many points were logged in its steps.
    """

    def __init__(self, max_bins: int, state: dict[str, Any] | None = None) -> None:
        self.max_bins = max_bins
        self.width = 1
        #: bin index (step // width) -> [sum of values, number of points]
        self.bins: dict[int, list[float]] = {}
        if state:
            self.width = int(state.get("width", 1))
            self.bins = {int(k): [float(s), float(n)] for k, s, n in state.get("bins", [])}

    def __len__(self) -> int:
        return len(self.bins)

    def add(self, step: int, value: float) -> bool:
        """Add one point; True when it opened a new bin (the previous ones are closed: time to test)."""
        key = step // self.width
        cell = self.bins.get(key)
        if cell is not None:
            cell[0] += value
            cell[1] += 1.0
            return False
        self.bins[key] = [value, 1.0]
        while len(self.bins) > self.max_bins:
            self._merge()
        return True

    def _merge(self) -> None:
        self.width *= 2
        merged: dict[int, list[float]] = {}
        for key, (total, n) in self.bins.items():
            cell = merged.setdefault(key // 2, [0.0, 0.0])
            cell[0] += total
            cell[1] += n
        self.bins = merged

    def closed(self, since_step: float, min_points: int = 0) -> tuple[list[float], list[float], int]:
        """Centre steps and means of the closed bins (all but the newest) from ``since_step`` on, reaching
        further back while they hold fewer than ``min_points`` points; and the points they hold."""
        width = self.width
        steps: list[float] = []
        means: list[float] = []
        points = 0
        for key in reversed(list(self.bins)[:-1]):
            if key * width < since_step and points >= min_points:
                break
            total, n = self.bins[key]
            steps.append(key * width + (width - 1) / 2.0)
            means.append(total / n)
            points += int(n)
        steps.reverse()
        means.reverse()
        return steps, means, points

    def first_step(self) -> int:
        return next(iter(self.bins)) * self.width if self.bins else 0

    def clear(self) -> None:
        self.bins.clear()
        self.width = 1

    def to_state(self) -> dict[str, Any]:
        return {"width": self.width, "bins": [[k, s, n] for k, (s, n) in self.bins.items()]}
