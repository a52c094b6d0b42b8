"""Cross-rank aggregation and the windowed statistics of the detectors, on a handful of values."""

from __future__ import annotations

import math

import pytest

from rankstream.stream_jobs.core.aggregate import Window, aggregate, is_finite, median


def test_summary_over_finite_values_with_a_nan_counted_apart() -> None:
    ranks = [0, 1, 2, 3]
    per_rank = [{"loss": 1.0}, {"loss": 3.0}, {"loss": math.nan}, {"loss": 2.0}]
    summaries, nonfinite = aggregate(ranks, per_rank)
    loss = summaries["loss"]
    assert loss["mean"] == pytest.approx(2.0)
    assert (loss["min"], loss["argmin"], loss["max"], loss["argmax"], loss["n"]) == (1.0, 0, 3.0, 1, 3)
    assert loss["std"] == pytest.approx(math.sqrt(2.0 / 3.0))  # population std of 1, 3, 2
    assert nonfinite == {"loss": 1}


def test_argmin_argmax_name_ranks_not_positions_and_ties_go_to_the_lowest_rank() -> None:
    summaries, nonfinite = aggregate([2, 5, 7], [{"t": 0.5}, {"t": 0.5}, {"t": 0.9}])
    t = summaries["t"]
    assert (t["argmin"], t["argmax"]) == (2, 7)
    assert t["std"] == pytest.approx(math.sqrt(((0.5 - 19 / 30) ** 2 * 2 + (0.9 - 19 / 30) ** 2) / 3))
    assert nonfinite == {}


def test_equal_values_have_zero_std() -> None:
    summaries, _ = aggregate([0, 1, 2], [{"x": 4.0}, {"x": 4.0}, {"x": 4.0}])
    assert summaries["x"] == {"mean": 4.0, "min": 4.0, "max": 4.0, "std": 0.0, "argmin": 0, "argmax": 0, "n": 3}


def test_metrics_reported_by_some_ranks_only() -> None:
    per_rank = [{"loss": 1.0, "grad_norm": 0.5}, {"loss": 2.0}, {"loss": 3.0, "grad_norm": -math.inf}]
    summaries, nonfinite = aggregate([0, 1, 2], per_rank)
    assert summaries["loss"]["n"] == 3
    grad = summaries["grad_norm"]
    assert (grad["n"], grad["mean"], grad["argmin"], grad["argmax"]) == (1, 0.5, 0, 0)
    assert nonfinite == {"grad_norm": 1}


def test_the_same_metrics_in_another_key_order_keep_the_first_ranks_order() -> None:
    per_rank = [{"lr": 0.1, "loss": 1.0}, {"loss": 3.0, "lr": 0.1}, {"lr": 0.1, "loss": 2.0}]
    summaries, nonfinite = aggregate([0, 1, 2], per_rank)
    assert list(summaries) == ["lr", "loss"]  # metrics reported by only some ranks come out sorted instead
    assert (summaries["loss"]["n"], summaries["loss"]["argmax"], summaries["loss"]["mean"]) == (3, 1, 2.0)
    assert nonfinite == {}


def test_a_metric_without_any_finite_value_is_only_counted() -> None:
    summaries, nonfinite = aggregate([0, 1], [{"loss": math.inf, "lr": 1e-4}, {"loss": math.nan, "lr": 1e-4}])
    assert "loss" not in summaries
    assert nonfinite == {"loss": 2}
    assert summaries["lr"]["mean"] == pytest.approx(1e-4)


def test_no_ranks() -> None:
    assert aggregate([], []) == ({}, {})


def test_median() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([]) == 0.0


def test_is_finite() -> None:
    assert is_finite(0.0) and is_finite(-1e300)
    assert not is_finite(math.nan) and not is_finite(math.inf) and not is_finite(-math.inf)


def test_window_keeps_the_newest_values() -> None:
    w = Window(3, [1.0, 2.0])
    for v in (3.0, 4.0, 5.0):
        w.add(v)
    assert w.to_list() == [3.0, 4.0, 5.0] and len(w) == 3
    mean, std = w.mean_std()
    assert mean == pytest.approx(4.0)
    assert std == pytest.approx(math.sqrt(2.0 / 3.0))
    assert w.median() == 4.0


def test_window_resize_keeps_the_newest_and_empty_window_is_zero() -> None:
    w = Window(4, [1.0, 2.0, 3.0, 4.0])
    w.resize(2)
    assert w.to_list() == [3.0, 4.0]
    w.add(5.0)
    assert w.to_list() == [4.0, 5.0]
    assert Window(8).mean_std() == (0.0, 0.0)
    assert Window(8).median() == 0.0
