"""Measure the loss trend rules over many seeds: false alerts on healthy runs, first alert on plateaus.

Not a test (it takes minutes): the figures in docs/rules.md ("How well loss_plateau does") come from

    python -m tests.unit.stream_jobs.core.plateau_rates --seeds 1000 --jobs 2

Curves and noise are those of test_cadence.py (1% noise a step, logged every ``cadence`` steps as the
interval's mean, warmup 100 steps), plus the synthetic generator's 3000-step run with a 1500-step stall
(its 4-rank mean: 1.1% noise a step), ms-swift's fine-tuning curve under 3% noise, and slow but real
descents after a fast start.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from tests.unit.stream_jobs.core.test_cadence import TREND_ONLY, N, healthy, plateau, power_law, rules_fired, sft

Curve = Callable[[float], float]


def _synthetic(s: float, steps: int = 3000) -> float:
    return 1.5 + 2.0 * math.exp(-3.0 * s / steps) + 0.8 * (1.0 - s / steps)


def synthetic_stall(s: float) -> float:
    """The synthetic run of 3000 steps stalled from step 1000 for 1500 steps."""
    return _synthetic(1000.0 if 1000 <= s < 2500 else s if s < 1000 else s - 1500)


def sft_stall(s: float) -> float:
    return sft(min(s, 1000.0))


def slow_descent(rate: float) -> Curve:
    """A fast first 1000 steps, then a steady descent of ``rate`` of the level per 1000 steps (N steps)."""

    def curve(s: float) -> float:
        return 2.0 * (1.0 - rate * s / 1000.0) + math.exp(-s / 500.0)

    curve.__name__ = f"slow_{rate * 100:g}pct_per_1000"
    return curve


#: name -> (curve, steps, cadences, noise, warmup, window the first loss_plateau must fall in or None)
SCENARIOS: dict[str, tuple[Curve, int, tuple[int, ...], float, int, tuple[float, float] | None]] = {
    "healthy": (healthy, N, (1, 10, 50, 500), 0.01, 100, None),
    "power_law": (power_law, N, (1, 10, 50, 500), 0.01, 100, None),
    "plateau": (plateau, N, (1, 10, 50, 500), 0.01, 100, (0.35 * N, 0.95 * N)),
    "synthetic_stall": (synthetic_stall, 3000, (1, 5, 10, 50), 0.011, 20, (1000, 2500)),
    "sft": (sft, 3000, (10,), 0.03, 1, None),
    "sft_stall": (sft_stall, 3000, (10,), 0.03, 1, (1000, 2000)),
    "slow_1pct": (slow_descent(0.01), N // 3, (1, 10, 50), 0.01, 100, None),
    "slow_0.3pct": (slow_descent(0.003), N // 3, (1, 10, 50), 0.01, 100, None),
}


def _one(args: tuple[str, int, int, float | None]) -> tuple[str, int, int, dict[str, int]]:
    name, cadence, seed, pace_frac = args
    curve, steps, _, noise, warmup, _ = SCENARIOS[name]
    rules = None if pace_frac is None else TREND_ONLY.with_changes({"loss_plateau": {"pace_frac": pace_frac}})
    fired = rules_fired(curve, cadence, seed, noise=noise, steps=steps, warmup=warmup, rules=rules)
    return name, cadence, seed, fired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1000, help="seeds of the healthy curves (a fifth for the rest)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--pace-frac", type=float, default=None, help="loss_plateau pace_frac (1e9: the rule before it)")
    a = ap.parse_args()
    names = [n for n in SCENARIOS if not a.only or n in a.only.split(",")]
    work = [
        (name, cadence, seed, a.pace_frac)
        for name in names
        for cadence in SCENARIOS[name][2]
        for seed in range(a.seeds if SCENARIOS[name][5] is None and name in ("healthy", "power_law") else a.seeds // 5)
    ]
    results: dict[tuple[str, int], list[dict[str, int]]] = {}
    with ProcessPoolExecutor(a.jobs) as pool:
        for name, cadence, _, fired in pool.map(_one, work, chunksize=8):
            if (name, cadence) not in results and results:  # in order: the previous group is complete
                report(*list(results.items())[-1])
            results.setdefault((name, cadence), []).append(fired)
    report(*list(results.items())[-1])


def report(group: tuple[str, int], runs: list[dict[str, int]]) -> None:
    """One line per (scenario, cadence): runs with a loss_plateau / loss_rising, and where the first plateau fell."""
    name, cadence = group
    window = SCENARIOS[name][5]
    plateaus = [r["loss_plateau"] for r in runs if "loss_plateau" in r]
    rising = sum("loss_rising" in r for r in runs)
    line = f"{name:16s} cadence {cadence:4d}: {len(runs):5d} runs, loss_plateau in {len(plateaus):4d}"
    if plateaus:
        line += f" (first step median {statistics.median(plateaus):.0f}, min {min(plateaus)}, max {max(plateaus)})"
    if window is not None:
        inside = sum(window[0] <= s <= window[1] for s in plateaus)
        line += f", inside {window[0]:.0f}-{window[1]:.0f}: {inside}"
    print(line + f", loss_rising in {rising}", flush=True)


if __name__ == "__main__":
    main()
