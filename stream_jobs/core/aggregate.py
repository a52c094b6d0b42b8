"""Cross-rank aggregation of one step's metrics, plus the small windowed statistics detectors use.

Values are always visited in rank order, so the result does not depend on the
order in which events arrived; ``mean`` is ``sum(finite values) / n``, what an
all-reduce average over the reporting ranks gives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from operator import mul
from typing import Any

_INF = float("inf")


def _summary(ranks: list[int], vals: list[float]) -> dict[str, Any]:
    n = len(vals)
    total = sum(vals)
    mean = total / n
    lo = min(vals)
    hi = max(vals)
    if n > 1 and lo != hi:
        d = [v - mean for v in vals]
        std = (sum(map(mul, d, d)) / n) ** 0.5
    else:
        std = 0.0
    return {
        "mean": mean,
        "min": lo,
        "max": hi,
        "std": std,
        "argmin": ranks[vals.index(lo)],
        "argmax": ranks[vals.index(hi)],
        "n": n,
    }


def aggregate(ranks: list[int], per_rank: list[dict[str, float]]) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Summaries of every metric over the finite values, and non-finite counts by metric.

    ``ranks`` is sorted and ``per_rank[i]`` belongs to ``ranks[i]``. A metric with
    no finite value at all is left out of the summaries (it shows in the counts).
    """
    out: dict[str, dict[str, Any]] = {}
    nonfinite: dict[str, int] = {}
    if not per_rank:
        return out, nonfinite
    first = per_rank[0]
    keys = first.keys()
    # Same keys in the same order (one producer): a cheap ordered test first, the set test only when it fails.
    same_order = [*map(tuple, per_rank)].count(tuple(first)) == len(per_rank)
    uniform = same_order or all(m.keys() == keys for m in per_rank)
    names = list(keys) if uniform else sorted({k for m in per_rank for k in m})
    # In the same order, every metric's values across ranks are one column of the values, split in one C pass.
    columns = iter(zip(*map(dict.values, per_rank), strict=True)) if same_order else None
    for name in names:
        if columns is not None:
            vals = list(next(columns))
            rk = ranks
        elif uniform:
            vals = [m[name] for m in per_rank]
            rk = ranks
        else:
            rk = [r for r, m in zip(ranks, per_rank, strict=True) if name in m]
            vals = [m[name] for m in per_rank if name in m]
        total = sum(vals)
        if total - total == 0.0:  # every value finite (and no overflow of the sum)
            out[name] = _summary(rk, vals)
            continue
        fin_r = []
        fin_v = []
        bad = 0
        for r, v in zip(rk, vals, strict=True):
            if v - v == 0.0:
                fin_r.append(r)
                fin_v.append(v)
            else:
                bad += 1
        if bad:
            nonfinite[name] = bad
        if fin_v:
            out[name] = _summary(fin_r, fin_v)
    return out, nonfinite


def median(values: Iterable[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return 0.0
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


class Window:
    """The last ``size`` values with mean / std / median on demand (bounded, exportable)."""

    __slots__ = ("values",)

    def __init__(self, size: int, values: Iterable[float] = ()) -> None:
        self.values: deque[float] = deque(values, maxlen=size)

    def add(self, value: float) -> None:
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.values)

    def mean_std(self) -> tuple[float, float]:
        n = len(self.values)
        if n == 0:
            return 0.0, 0.0
        mean = sum(self.values) / n
        d = [v - mean for v in self.values]
        return mean, (sum(map(mul, d, d)) / n) ** 0.5

    def median(self) -> float:
        return median(self.values)

    def resize(self, size: int) -> None:
        if self.values.maxlen != size:
            self.values = deque(self.values, maxlen=size)

    def to_list(self) -> list[float]:
        return list(self.values)


def is_finite(value: float) -> bool:
    return value - value == 0.0
