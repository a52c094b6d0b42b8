"""The UI's downsampling arithmetic and the shaping of store rows into chart JSON (no store needed)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rankstream.ui import queries as q


@given(lo=st.integers(-10, 10**6), length=st.integers(1, 10**7), points=st.integers(1, 5000))
def test_buckets_cover_the_range_in_at_most_the_asked_number(lo: int, length: int, points: int) -> None:
    hi = lo + length - 1
    width = q.bucket_width(lo, hi, points)
    buckets = (hi - lo) // width + 1
    assert buckets <= points
    assert width == 1 or (hi - lo) // (width - 1) + 1 > points  # no narrower width would do


def test_clamp_points_keeps_requests_sane() -> None:
    assert q.clamp_points(None) == q.DEFAULT_POINTS
    assert q.clamp_points(1) == 10
    assert q.clamp_points(10**9) == q.MAX_POINTS


def test_rank_window_is_the_whole_run_when_small_and_its_latest_steps_when_large() -> None:
    whole = q.rank_window(0, 999, 8, 100, (None, None))
    assert (whole.lo, whole.hi, whole.width, whole.clipped) == (0, 999, 10, False)
    big = q.rank_window(0, 999_999, 256, 500, (None, None))
    assert big.clipped and big.hi == 999_999
    assert (big.hi - big.lo + 1) * 256 <= q.RANK_ROWS_LIMIT
    zoomed = q.rank_window(0, 999_999, 256, 500, (1000, 2999))
    assert (zoomed.lo, zoomed.hi, zoomed.clipped) == (1000, 2999, False)
    backwards = q.rank_window(0, 100, 4, 50, (80, 20))
    assert (backwards.lo, backwards.hi) == (20, 80)


def row(metric: str, bucket: int, step_lo: int, mean_lo: float, step_hi: int, mean_hi: float, **kw: float) -> tuple:
    band = (kw.get("band_lo", mean_lo - 1), kw.get("band_hi", mean_hi + 1))
    finite = int(kw.get("finite", 2))
    bad = int(kw.get("bad", 0))
    return (
        metric,
        bucket,
        step_lo,
        mean_lo,
        step_hi,
        mean_hi,
        *band,
        finite,
        min(step_lo, step_hi),
        int(kw.get("bad_step", 0)),
        bad,
    )


def test_a_bucket_keeps_its_lowest_and_highest_mean_at_their_steps_in_step_order() -> None:
    rows = [row("loss", 0, 7, 1.0, 3, 9.0), row("loss", 1, 10, 2.0, 10, 2.0)]
    shaped = q.shape_series(rows, ["loss", "lr"])
    assert shaped["loss"]["step"] == [3, 7, 10]  # the spike at step 3 survives
    assert shaped["loss"]["mean"] == [9.0, 1.0, 2.0]
    assert shaped["loss"]["min"] == [0.0, 0.0, 1.0] and shaped["loss"]["max"] == [10.0, 10.0, 3.0]
    assert shaped["lr"] == {"step": [], "mean": [], "min": [], "max": [], "nonfinite": []}


def test_non_finite_buckets_are_gaps_with_a_marker() -> None:
    rows = [row("loss", 0, 0, 0.0, 0, 0.0, finite=0, bad=4, bad_step=2, band_lo=math.inf, band_hi=math.nan)]
    shaped = q.shape_series(rows, ["loss"])["loss"]
    assert shaped["mean"] == [None] and shaped["min"] == [None] and shaped["max"] == [None]
    assert shaped["nonfinite"] == [2]


def test_compare_aligns_runs_on_shared_bucket_starts() -> None:
    rows = [("a", "loss", 0, 2.0, 5), ("a", "loss", 2, 1.0, 5), ("b", "loss", 1, 3.0, 5), ("b", "loss", 2, math.nan, 0)]
    shaped = q.shape_compare(rows, ["a", "b"], ["loss", "lr"], lo=100, width=10)
    assert shaped["step"] == [100, 110, 120]
    assert shaped["series"]["loss"] == {"a": [2.0, None, 1.0], "b": [None, 3.0, None]}
    assert shaped["series"]["lr"] == {"a": [None, None, None], "b": [None, None, None]}


def test_ranks_grid_has_every_rank_and_bucket() -> None:
    window = q.Window(lo=10, hi=29, width=5, clipped=False)
    shaped = q.shape_ranks([(0, 0, 1.0), (2, 3, 4.0), (2, 1, math.inf)], window, world_size=3)
    assert shaped["step"] == [10, 15, 20, 25]
    assert shaped["ranks"] == [0, 1, 2]
    assert shaped["values"] == [[1.0, None, None, None], [None] * 4, [None, None, None, 4.0]]
    assert shaped["window"] == {"lo": 10, "hi": 29, "width": 5, "clipped": False}


def alert_row(alert_id: str, state: str, step: int, ts: float, resolved_step: int = 0, message: str = "m") -> tuple:
    return (alert_id, "loss_spike", "warning", step, [1], ts, state, resolved_step, message, '{"value": 3}')


@pytest.mark.parametrize("order", [1, -1])
def test_a_resolution_ends_its_alert_whatever_order_the_rows_come_in(order: int) -> None:
    rows = [alert_row("x", "firing", 70, 1.0, message="spike"), alert_row("x", "resolved", 70, 2.0, 120, "Resolved")]
    rows += [alert_row("y", "", 90, 3.0)]  # stored before resolution existed: firing
    paired = q.pair_alerts(rows[::order] if order == -1 else rows)
    assert [(a["alert_id"], a["state"], a["resolved_step"]) for a in paired] == [
        ("x", "resolved", 120),
        ("y", "firing", None),
    ]
    assert paired[0]["message"] == "spike" and paired[0]["ts"] == 1.0 and paired[0]["evidence"] == {"value": 3}
