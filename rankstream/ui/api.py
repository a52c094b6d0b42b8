"""The UI's JSON: what each chart draws, computed by the store (see :mod:`.queries`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rankstream.ui import queries as q
from rankstream.ui.reader import RowSource

#: Metrics the run page draws, by chart (absent ones are left out).
CURVES: dict[str, tuple[str, ...]] = {
    "loss": ("loss",),
    "lr": ("lr",),
    "grad_norm": ("grad_norm", "grad_norm_adapter", "grad_norm_backbone"),
}
RANK_METRICS = ("step_time_s", "data_time_s", "compute_time_s", "mem_peak_mb", "mem_alloc_mb")


def runs(
    reader: RowSource,
    *,
    team: str = "",
    project: str = "",
    status: str = "",
    since_s: int = 0,
    run_ids: Sequence[str] = (),
    limit: int = 500,
) -> list[dict[str, Any]]:
    """The runs matching the filters, newest first, with last step and firing alerts."""
    columns = (
        "run_id",
        "team",
        "project",
        "run_name",
        "status",
        "world_size",
        "task_type",
        "model_name",
        "started_at",
        "ended_at",
        "updated_at",
    )
    params = {
        "want_team": team,
        "want_project": project,
        "want_status": status,
        "since_s": since_s,
        "run_ids": list(run_ids),
        "limit": limit,
    }
    found = [dict(zip(columns, row, strict=True)) for row in reader.rows(q.RUNS_SQL, params)]
    if not found:
        return []
    ids = {"run_ids": [r["run_id"] for r in found]}
    last: dict[str, int] = {row[0]: int(row[1]) for row in reader.rows(q.LAST_STEPS_SQL, ids)}
    firing: dict[str, int] = {row[0]: int(row[1]) for row in reader.rows(q.FIRING_SQL, ids)}
    for run in found:
        run["last_step"] = last.get(run["run_id"])
        run["firing"] = firing.get(run["run_id"], 0)
    return found


def run_info(reader: RowSource, run_id: str) -> dict[str, Any] | None:
    """One run's row, last step, firing alerts and the metrics it has aggregates of; None if unknown."""
    found = runs(reader, run_ids=[run_id], limit=1)
    if not found:
        return None
    info = found[0]
    info["metrics"] = [row[0] for row in reader.rows(q.RUN_METRICS_SQL, {"run_id": run_id})]
    return info


def _bounds(reader: RowSource, run_ids: Sequence[str], metrics: Sequence[str]) -> tuple[int, int, bool] | None:
    lo, hi, attempts, count = reader.rows(q.SERIES_BOUNDS_SQL, {"run_ids": list(run_ids), "metrics": list(metrics)})[0]
    if not count:
        return None
    return int(lo), int(hi), bool(attempts)


def series(
    reader: RowSource,
    run_id: str,
    metrics: Sequence[str],
    points: int | None = None,
    span: tuple[int | None, int | None] = (None, None),
) -> dict[str, Any]:
    """Downsampled curves of ``metrics`` (mean with the cross-rank min..max band) over ``span`` or the run."""
    bounds = _bounds(reader, [run_id], metrics)
    if bounds is None:
        return {"metrics": {}, "width": 1, "lo": None, "hi": None}
    lo = bounds[0] if span[0] is None else max(bounds[0], span[0])
    hi = bounds[1] if span[1] is None else min(bounds[1], span[1])
    width = q.bucket_width(lo, hi, q.clamp_points(points))
    params = {"run_ids": [run_id], "metrics": list(metrics), "lo": lo, "hi": hi, "width": width}
    rows = reader.rows(q.series_sql(bounds[2]), params)
    shaped = q.shape_series(rows, metrics)
    return {"metrics": {m: s for m, s in shaped.items() if s["step"]}, "width": width, "lo": lo, "hi": hi}


def compare(reader: RowSource, run_ids: Sequence[str], metrics: Sequence[str], points: int | None = None) -> dict:
    """The runs' mean curves of ``metrics`` on one step axis (same buckets for every run)."""
    bounds = _bounds(reader, run_ids, metrics)
    if bounds is None:
        return {"step": [], "series": {m: {r: [] for r in run_ids} for m in metrics}, "width": 1}
    lo, hi, attempts = bounds
    width = q.bucket_width(lo, hi, q.clamp_points(points))
    params = {"run_ids": list(run_ids), "metrics": list(metrics), "lo": lo, "hi": hi, "width": width}
    shaped = q.shape_compare(reader.rows(q.compare_sql(attempts), params), run_ids, metrics, lo, width)
    return {**shaped, "width": width}


def ranks(
    reader: RowSource,
    run_id: str,
    metric: str,
    points: int | None = None,
    span: tuple[int | None, int | None] = (None, None),
) -> dict[str, Any]:
    """Each rank's largest ``metric`` per bucket over a bounded window (heatmap and per-rank lines)."""
    lo, hi, world_size = reader.rows(q.RANK_BOUNDS_SQL, {"run_id": run_id})[0]
    if not world_size:
        return {"metric": metric, "step": [], "ranks": [], "values": [], "window": None}
    window = q.rank_window(int(lo), int(hi), int(world_size), q.clamp_points(points), span)
    params = {"run_id": run_id, "metric": metric, "lo": window.lo, "hi": window.hi, "width": window.width}
    shaped = q.shape_ranks(reader.rows(q.RANK_SQL, params), window, int(world_size))
    return {"metric": metric, **shaped}


def alerts(reader: RowSource, run_id: str) -> list[dict[str, Any]]:
    """The run's alerts, each firing or resolved (with the step it ended at), with its evidence."""
    return q.pair_alerts(reader.rows(q.ALERTS_SQL, {"run_id": run_id}))
