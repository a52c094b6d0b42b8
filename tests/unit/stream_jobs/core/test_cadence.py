"""The loss rules give the same verdict at any logging cadence (issue 17): a run logged every 1, 10, 50, 200 or
500 steps, as the interval means HF Trainer, ms-swift and Megatron log, is judged the same; noisy climbs are
caught; trend statistics and detector state are exact."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankstream.dev.synthetic import Fault, generate_run
from rankstream.importers import import_hf_trainer_state, import_swift_jsonl
from rankstream.schema import validate_event
from rankstream.stream_jobs.core import Engine
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.detect_loss import LossDetector
from rankstream.stream_jobs.core.params import RuleSet
from rankstream.stream_jobs.core.trend import RollingKendall, StepBins, kendall_s, kendall_z, theil_sen
from tests.corekit import logged_every

CADENCES = (1, 10, 50, 200, 500)
N = 30_000
WARMUP = 100


def released(step: int, loss: float) -> Released:
    summary = {"mean": loss, "min": loss, "max": loss, "std": 0.0, "argmin": 0, "argmax": 0, "n": 1}
    record = {"step": step, "ts_first": 1e3 + step, "ts_last": 1e3 + step, "metrics": {"loss": summary}}
    record.update(nonfinite={}, ranks_reported=1)
    return Released(record, [0], [{"loss": loss}], [1e3 + step], False, False)


def healthy(s: float) -> float:
    """The synthetic runs' falling loss, stretched over N steps."""
    return 1.5 + 2.0 * math.exp(-3.0 * s / N) + 0.8 * (1.0 - s / N)


def power_law(s: float) -> float:
    """A pre-training curve: fast at first, then ever slower (but still falling)."""
    return 2.0 + 3.0 * (s + 100.0) ** -0.3


def plateau(s: float) -> float:
    """Flat from 35% to 95% of the run."""
    a, b = 0.35 * N, 0.95 * N
    return healthy(min(s, a)) if s < b else healthy(a + s - b)


def rising(s: float) -> float:
    """Diverges from 60% of the run: +5x its level over the rest (about +3% per 100 steps)."""
    a = 0.6 * N
    return healthy(s) if s < a else healthy(a) * (1.0 + 5.0 * (s - a) / N)


def rules_fired(
    curve: Callable[[float], float],
    cadence: int,
    seed: int,
    noise: float = 0.01,
    steps: int = N,
    warmup: int = WARMUP,
    rules: RuleSet | None = None,
) -> dict[str, int]:
    """Feed ``curve`` with per-step noise, logged every ``cadence`` steps as the mean of the interval; the
    first step each loss trend rule fired at (under ``rules``, TREND_ONLY by default)."""
    rng = random.Random(seed)
    det = LossDetector(rules or TREND_ONLY)
    first: dict[str, int] = {}
    acc = 0.0
    for s in range(steps):
        acc += curve(s) * (1.0 + noise * rng.gauss(0.0, 1.0))
        if (s + 1) % cadence:
            continue
        for f in det.on_step(released(s, acc / cadence), warmup=s < warmup, label="r"):
            first.setdefault(f.rule, s)
        acc = 0.0
    return {rule: step for rule, step in first.items() if rule in ("loss_rising", "loss_plateau")}


#: loss_spike never reaches its window (it is not what these tests are about, and it is the slow part).
TREND_ONLY = RuleSet().with_changes({"loss_spike": {"min_samples": 10**9}})
#: Random seeds at every run. Measured (docs/rules.md, tests/unit/stream_jobs/core/plateau_rates.py): no trend
#: alert in 1,000 healthy and 1,000 power-law runs at each of cadences 1, 10, 50 and 500, and every plateau
#: found inside it, so any failure here is a regression, not a flake.
_SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: (curve, seed) pairs that warned loss_plateau early at cadence 10 before the rule weighed the run's pace
#: (seed 2341 at step 379: 1 run in 120; the stretch was too short and noisy to show the descent).
EARLY_FALSE_PLATEAUS = [("healthy", s) for s in (346, 385, 502, 568, 713, 740, 772, 800, 2341)] + [
    ("power_law", 86),
    ("power_law", 129),
]


@_SETTINGS
@given(seed=st.integers(0, 1_000_000), curve=st.sampled_from([healthy, power_law]))
def test_a_healthy_run_raises_no_trend_alert_at_any_cadence(seed: int, curve: Callable[[float], float]) -> None:
    for cadence in CADENCES:
        assert rules_fired(curve, cadence, seed) == {}, (curve.__name__, cadence)


@pytest.mark.parametrize(("curve", "seed"), EARLY_FALSE_PLATEAUS)
def test_a_healthy_run_too_noisy_early_to_show_its_descent_is_no_plateau(curve: str, seed: int) -> None:
    assert rules_fired({"healthy": healthy, "power_law": power_law}[curve], 10, seed) == {}


@_SETTINGS
@given(seed=st.integers(0, 1_000_000))
def test_a_plateau_is_found_at_every_cadence(seed: int) -> None:
    for cadence in CADENCES:
        fired = rules_fired(plateau, cadence, seed)
        assert set(fired) == {"loss_plateau"}, (cadence, fired)
        assert 0.35 * N <= fired["loss_plateau"] <= 0.95 * N, (cadence, fired)  # within the plateau


@_SETTINGS
@given(seed=st.integers(0, 1_000_000))
def test_a_divergence_is_loss_rising_at_every_cadence(seed: int) -> None:
    for cadence in CADENCES:
        fired = rules_fired(rising, cadence, seed)
        assert "loss_rising" in fired, (cadence, fired)
        assert 0.6 * N <= fired["loss_rising"] <= 0.9 * N, (cadence, fired)


@pytest.mark.parametrize(("rate", "noise"), [(0.006, 0.02), (0.006, 0.08), (0.003, 0.05)])
def test_a_noisy_climb_that_never_rises_ten_times_in_a_row_is_loss_rising(rate: float, noise: float) -> None:
    """A divergence of +``rate`` per step under ``noise`` per step, logged every step: caught within 100 steps,
    seed after seed (the 10-consecutive reading alone missed 6-7 of these 10 seeds at 5-8% noise)."""
    for seed in range(10):
        rng = random.Random(seed)
        det = LossDetector(TREND_ONLY)
        found = []
        for s in range(400):
            level = 2.0 if s < 300 else 2.0 * (1.0 + rate * (s - 300))
            found += det.on_step(released(s, level * (1.0 + noise * rng.gauss(0.0, 1.0))), warmup=s < 20, label="r")
        rises = [f for f in found if f.rule == "loss_rising"]
        assert rises and 300 <= rises[0].step <= 400, (seed, [(f.rule, f.step) for f in found])


def test_the_noisy_reading_says_what_it_saw() -> None:
    rng = random.Random(7)
    det = LossDetector(RuleSet().with_changes({"loss_rising": {"steps": 1000}}))  # the trend reading only
    found = []
    for s in range(200):
        found += det.on_step(
            released(s, 2.0 * (1.0 + 0.004 * s) * (1 + 0.03 * rng.gauss(0, 1))), warmup=False, label="r"
        )
    (first, *_) = [f for f in found if f.rule == "loss_rising"]
    assert first.evidence["reading"] == "trend"
    assert first.evidence["kendall_z"] >= 4.0 and first.evidence["rise_rel"] >= 0.02
    assert "trending up" in first.message


def test_detector_state_resumes_mid_run_with_the_same_findings() -> None:
    rng = random.Random(3)
    values = [plateau(s * 50) * (1 + 0.01 * rng.gauss(0, 1)) for s in range(N // 50)]

    def run(split: int | None) -> list[tuple[str, int]]:
        det = LossDetector(RuleSet())
        out = []
        for i, x in enumerate(values):
            if i == split:
                state = det.to_state()
                det = LossDetector(RuleSet())
                det.load_state(state)
            out += [(f.rule, f.step) for f in det.on_step(released(i * 50, x), warmup=i < 2, label="r")]
        return out

    whole = run(None)
    assert ("loss_plateau", whole[0][1]) in whole
    assert run(len(values) // 2) == whole
    assert run(len(values) // 3) == whole


def test_rolling_kendall_matches_the_full_statistic() -> None:
    rng = random.Random(1)
    w = RollingKendall(20)
    values: list[float] = []
    for i in range(200):
        x = rng.choice([1.0, 2.0, 3.0]) if i % 3 else rng.random()  # ties included
        w.add(i, x)
        values.append(x)
        assert w.s == kendall_s(values[-20:])
    assert kendall_z(kendall_s(list(range(10))), 10) > 3.0
    assert kendall_z(kendall_s(list(range(10, 0, -1))), 10) < -3.0


def test_theil_sen_ignores_an_outlier() -> None:
    xs = [float(i) for i in range(11)]
    ys = [2.0 * x + 1.0 for x in xs]
    ys[5] = 1000.0
    assert theil_sen(xs, ys) == 2.0


def test_step_bins_stay_bounded_and_keep_the_mean() -> None:
    bins = StepBins(64)
    total = 0.0
    for s in range(0, 100_000, 7):
        bins.add(s, float(s))
        total += s
    assert len(bins) <= 64
    assert sum(cell[0] for cell in bins.bins.values()) == total
    steps, means, points = bins.closed(0.0)
    assert points == sum(int(cell[1]) for cell in list(bins.bins.values())[:-1])
    assert steps == sorted(steps) and means == sorted(means)
    restored = StepBins(64, bins.to_state())
    assert restored.bins == bins.bins and restored.width == bins.width


def sft(s: float) -> float:
    """A fine-tuning loss: a quick drop, then a slow descent (0.5% per 200 steps at the end)."""
    return 1.2 + 0.5 * math.exp(-s / 300.0) + 0.1 * (1.0 - s / 3000.0)


def swift_lines(curve: Callable[[float], float], steps: int, every: int, seed: int) -> list[str]:
    """An ms-swift logging.jsonl of ``curve`` with 3% noise per step: the mean loss of every ``every`` steps."""
    rng = random.Random(seed)
    lines = []
    for end in range(every, steps + 1, every):
        loss = sum(curve(s) * (1.0 + 0.03 * rng.gauss(0.0, 1.0)) for s in range(end - every, end)) / every
        row = {"loss": round(loss, 6), "grad_norm": 1.0, "learning_rate": 1e-4, "memory(GiB)": 17.0}
        row.update({"global_step/max_steps": f"{end}/{steps}", "elapsed_time": f"{2 * end}s"})
        lines.append(json.dumps(row))
    return lines


def trend_alerts(events: list[dict]) -> list[tuple[str, int]]:
    engine = Engine()
    out = engine.process_many(validate_event(e) for e in events)
    out.extend(engine.finish())
    return [(a["rule"], a["step"]) for a in out.alerts if a["rule"] in ("loss_rising", "loss_plateau")]


def test_ms_swift_and_hf_logs_of_a_falling_loss_raise_no_plateau() -> None:
    """The issue's case: an ms-swift run logged every 10 steps, and the HF checkpoint of it (the rules before
    issue 17 raised 5-6 loss_plateau warnings on each of these)."""
    for seed in range(3):
        lines = swift_lines(sft, 3000, 10, seed)
        swift = import_swift_jsonl(lines, run_id="sw")
        assert trend_alerts(swift.events) == [], seed
        history = [{"step": e["step"], "loss": e["metrics"]["loss"]} for e in swift.events if e["kind"] == "step"]
        hf = import_hf_trainer_state(json.dumps({"global_step": 3000, "log_history": history}), run_id="hf")
        assert trend_alerts(hf.events) == [], seed


def test_ms_swift_log_of_a_stalled_loss_is_a_plateau() -> None:
    lines = swift_lines(lambda s: sft(min(s, 1000.0)), 3000, 10, 0)
    fired = trend_alerts(import_swift_jsonl(lines, run_id="sw").events)
    assert [rule for rule, _ in fired] == ["loss_plateau"] and 1000 <= fired[0][1] <= 2000


#: Derandomized (the same two seeds every run): random seeds found a loss_rising false positive inside a stall
#: (seed 803622, cadence 5: below), a weakness of loss_rising's noisy reading, not of loss_plateau; the plateau
#: verdict itself was measured on 40 random seeds x 4 cadences (docs/rules.md).
@settings(_SETTINGS, max_examples=2, derandomize=True)  # two runs of 3000 steps x 4 ranks, replayed at 4 cadences
@given(seed=st.integers(0, 1_000_000))
def test_synthetic_runs_subsampled_get_the_same_verdict(seed: int) -> None:
    """The project's synthetic runs, logged every 1, 5, 10 or 50 steps: a healthy one raises no trend alert, one
    that stalls for 1500 steps raises exactly one loss_plateau, inside the stall, at each cadence."""
    healthy = generate_run("h", 4, 3000, seed=seed)
    stalled = generate_run("p", 4, 3000, seed=seed, faults=[Fault("plateau", 1000, duration=1500)])
    for cadence in (1, 5, 10, 50):
        assert trend_alerts(logged_every(healthy, cadence)) == [], cadence
        fired = trend_alerts(logged_every(stalled, cadence))
        assert [rule for rule, _ in fired] == ["loss_plateau"], (cadence, fired)
        assert 1000 <= fired[0][1] < 2500, (cadence, fired)


def test_a_loss_that_never_falls_after_warmup_is_a_plateau_at_every_cadence() -> None:
    """No pace to compare with (the run never fell): the significance reading alone decides, as before."""
    for cadence in CADENCES:
        fired = rules_fired(lambda s: 2.0, cadence, seed=5, steps=N // 3)
        assert set(fired) == {"loss_plateau"}, (cadence, fired)
        assert fired["loss_plateau"] <= WARMUP + max(2000, 40 * cadence), (cadence, fired)


def test_noise_over_a_long_stall_does_not_end_the_plateau() -> None:
    """Seed 23 of the synthetic stall, at cadence 1: a flat stretch read as a significant (but negligible)
    decrease 8 judgements in a row, which ended the plateau and warned a second time at step 2240."""
    stalled = generate_run("p", 4, 3000, seed=23, faults=[Fault("plateau", 1000, duration=1500)])
    fired = trend_alerts(stalled)
    assert [rule for rule, _ in fired] == ["loss_plateau"] and 1000 <= fired[0][1] < 2500, fired


def test_a_slow_fine_tuning_descent_under_heavy_noise_is_rarely_a_plateau_and_its_stall_always_is() -> None:
    """The ms-swift curve (0.5% per 200 steps at the end) under 3% noise a step, logged every 10 steps, over
    100 seeds: at most 5 read as a plateau (measured: 4; 49 of 200 before the pace condition, 6 at
    `pace_frac` 0.1), and the same curve stalled from step 1000 is a plateau inside the stall every time."""
    slow = [seed for seed in range(100) if rules_fired(sft, 10, seed, noise=0.03, steps=3000, warmup=1)]
    assert len(slow) <= 5, slow
    for seed in range(100):
        fired = rules_fired(lambda s: sft(min(s, 1000.0)), 10, seed, noise=0.03, steps=3000, warmup=1)
        assert set(fired) == {"loss_plateau"} and 1000 <= fired["loss_plateau"] <= 2000, (seed, fired)


@pytest.mark.xfail(
    strict=True,
    reason="loss_rising's noisy reading (Mann-Kendall z >= 4 over 20 bins of 5 steps) "
    "finds a +3.8% rise in a flat stall's noise at cadence 5; left for a loss_rising change",
)
def test_a_stall_logged_every_5_steps_raises_no_loss_rising() -> None:
    stalled = generate_run("p", 4, 3000, seed=803622, faults=[Fault("plateau", 1000, duration=1500)])
    assert [rule for rule, _ in trend_alerts(logged_every(stalled, 5))] == ["loss_plateau"]
