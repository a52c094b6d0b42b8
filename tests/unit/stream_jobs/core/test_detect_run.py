"""LossDetector and GradDetector called directly on hand-made aligned steps: what they find, where, with what data."""

from __future__ import annotations

import math

import pytest

from rankstream.stream_jobs.core.aggregate import aggregate
from rankstream.stream_jobs.core.alerts import Finding
from rankstream.stream_jobs.core.align import Released
from rankstream.stream_jobs.core.detect_run import GradDetector, LossDetector
from rankstream.stream_jobs.core.params import RuleSet

LABEL = "run r (r)"


def released(step: int, per_rank: list[dict[str, float]], ts: float | None = None) -> Released:
    """An aligned step of ``len(per_rank)`` ranks, aggregated as the aligner does."""
    ranks = list(range(len(per_rank)))
    summaries, nonfinite = aggregate(ranks, per_rank)
    at = 1000.0 + step if ts is None else ts
    record = {
        "step": step,
        "ts_first": at,
        "ts_last": at,
        "metrics": summaries,
        "nonfinite": nonfinite,
        "ranks_reported": len(ranks),
    }
    return Released(record, ranks, per_rank, [at] * len(ranks), False, False)


def feed_loss(det: LossDetector, losses: list[float], start: int = 0, warmup: bool = False) -> list[Finding]:
    found: list[Finding] = []
    for i, loss in enumerate(losses):
        found += det.on_step(released(start + i, [{"loss": loss}, {"loss": loss}]), warmup=warmup, label=LABEL)
    return found


#: 40 steps alternating 1.99 / 2.01: mean 2.0, std 0.01.
BASELINE = [2.0 + 0.01 * (-1) ** i for i in range(40)]


def test_loss_spike_found_at_its_step_with_its_evidence() -> None:
    det = LossDetector(RuleSet())
    assert feed_loss(det, BASELINE) == []
    (spike,) = feed_loss(det, [3.0], start=40)
    assert (spike.rule, spike.step, spike.severity, spike.ranks, spike.ts, spike.warmup) == (
        "loss_spike",
        40,
        "warning",
        (),
        1040.0,
        False,
    )
    ev = spike.evidence
    assert ev["loss"] == 3.0 and ev["window"] == 40
    assert ev["window_mean"] == pytest.approx(2.0)
    assert ev["window_std"] == pytest.approx(0.01)
    assert ev["ratio"] == pytest.approx(1.5)
    assert ev["z"] == pytest.approx(100.0)
    assert "spiked to 3 at step 40" in spike.message and LABEL in spike.message
    assert len(det.window) == 40, "a spike stays out of the baseline"


def test_no_spike_before_min_samples_and_warmup_is_marked() -> None:
    det = LossDetector(RuleSet())
    assert feed_loss(det, [*BASELINE[:20], 30.0]) == []  # 20 samples < min_samples=32
    det = LossDetector(RuleSet())
    feed_loss(det, BASELINE)
    (spike,) = feed_loss(det, [30.0], start=40, warmup=True)
    assert spike.warmup is True
    assert spike.severity == "critical", "15x the mean is over critical_ratio=10"


def test_sustained_spike_is_critical_after_sustained_steps() -> None:
    det = LossDetector(RuleSet())
    feed_loss(det, BASELINE)
    found = feed_loss(det, [4.5] * 5, start=40)
    assert [(f.step, f.severity) for f in found] == [
        (40, "warning"),
        (41, "warning"),
        (42, "warning"),
        (43, "warning"),
        (44, "critical"),
    ]
    last = found[-1]
    assert last.evidence["consecutive_steps"] == 5
    assert "has stayed at 2.25x its recent mean for 5 steps" in last.message
    assert len(det.window) == 0, "a sustained spike starts a new baseline"


def test_disabled_loss_spike_finds_nothing() -> None:
    det = LossDetector(RuleSet().with_changes({"loss_spike": {"enabled": False}}))
    feed_loss(det, BASELINE)
    assert feed_loss(det, [30.0], start=40) == []


def test_nonfinite_loss_names_its_ranks() -> None:
    det = LossDetector(RuleSet())
    (found,) = det.on_step(released(7, [{"loss": 2.0}, {"loss": math.nan}, {"loss": 2.1}]), warmup=False, label=LABEL)
    assert (found.rule, found.step, found.severity, found.ranks) == ("nonfinite_loss", 7, "critical", (1,))
    assert found.evidence == {"ranks": [1], "nonfinite_ranks": 1, "ranks_reported": 3}


def test_loss_rising_after_steps_consecutive_rises() -> None:
    det = LossDetector(RuleSet())
    found = feed_loss(det, [2.0 + 0.1 * i for i in range(11)])
    assert [(f.rule, f.step) for f in found] == [("loss_rising", 10)], "the 10th rise of the EWMA"
    assert found[0].evidence["consecutive_steps"] == 10
    assert found[0].evidence["start_ewma"] == 2.0


def feed_grad(
    det: GradDetector, per_rank_steps: list[list[dict[str, float]]], start: int = 0, fp16: bool = False
) -> list[Finding]:
    found: list[Finding] = []
    for i, per_rank in enumerate(per_rank_steps):
        found += det.on_step(released(start + i, per_rank), warmup=False, fp16=fp16, label=LABEL)
    return found


def test_grad_explosion_warning_and_critical_against_the_window_median() -> None:
    det = GradDetector(RuleSet())
    assert feed_grad(det, [[{"grad_norm": 1.0}, {"grad_norm": 0.5}]] * 40) == []
    (warn,) = feed_grad(det, [[{"grad_norm": 20.0}, {"grad_norm": 1.0}]], start=40)
    assert (warn.rule, warn.step, warn.severity) == ("grad_explosion", 40, "warning")
    assert warn.evidence == {"grad_norm": 20.0, "window_median": 1.0, "ratio": 20.0, "window": 40}
    (crit,) = feed_grad(det, [[{"grad_norm": 200.0}, {"grad_norm": 1.0}]], start=41)
    assert crit.severity == "critical" and crit.evidence["window"] == 40, "an explosion stays out of the window"


def test_nonfinite_grad_outside_fp16_is_critical() -> None:
    det = GradDetector(RuleSet())
    (found,) = feed_grad(det, [[{"grad_norm": 1.0}, {"grad_norm": math.inf}]], start=3)
    assert (found.rule, found.step, found.severity, found.ranks) == ("nonfinite_grad", 3, "critical", (1,))
    assert found.evidence == {"ranks": [1], "precision": "bf16/fp32"}


def test_fp16_overflow_with_a_halving_scale_is_info() -> None:
    det = GradDetector(RuleSet())
    ok = {"grad_norm": 1.0, "loss_scale": 65536.0}
    overflow = {"grad_norm": math.inf, "loss_scale": 32768.0}
    (found,) = feed_grad(det, [[ok, ok], [overflow, overflow]], fp16=True)
    assert (found.rule, found.step, found.severity, found.ranks) == ("nonfinite_grad", 1, "info", (0, 1))
    assert found.evidence["scale_reduced"] is True
    assert found.evidence["prev_loss_scale"] == 65536.0 and found.evidence["loss_scale"] == 32768.0
    assert found.evidence["consecutive_overflow_steps"] == 1


def test_grad_vanishing_after_its_steps_and_not_before() -> None:
    det = GradDetector(RuleSet())
    found = feed_grad(det, [[{"grad_norm": 1e-9}, {"grad_norm": 1e-9}]] * 10)
    assert [(f.rule, f.step) for f in found] == [("grad_vanishing", 9)]
    assert found[0].evidence == {"grad_norm": 1e-9, "window_median": 0.0, "consecutive_steps": 10}


def test_adapter_vanishing_with_a_frozen_backbone_and_no_plain_vanishing_under_lora() -> None:
    det = GradDetector(RuleSet())
    step = {"grad_norm": 1e-9, "grad_norm_adapter": 1e-6, "grad_norm_backbone": 0.0}
    found = feed_grad(det, [[step, step]] * 10)
    assert [(f.rule, f.step) for f in found] == [("adapter_grad_vanishing", 9)]
    assert found[0].evidence["grad_norm_backbone"] == 0.0 and found[0].evidence["consecutive_steps"] == 10
    det = GradDetector(RuleSet())
    learning_backbone = {**step, "grad_norm_backbone": 0.3}
    assert feed_grad(det, [[learning_backbone, learning_backbone]] * 12) == []
