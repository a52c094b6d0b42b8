"""The UI's SQL, downsampled in the store, and the pure functions that shape its rows into chart JSON.

Charts never receive more than about ``points`` x-values, whatever the run's length:

* **curves** (``step_metrics``, one row per aligned step and metric): steps fall into
  ``points`` buckets of equal width; each bucket gives two points, the steps of its lowest
  and of its highest mean (min/max decimation, so a one-step spike survives any zoom), and
  the cross-rank band (lowest ``min``, highest ``max``) of the bucket;
* **per-rank views** (``metrics``, one row per rank, step and metric): each rank's largest
  value per bucket (the straggler or the memory peak is what must stay visible), over a
  window of at most :data:`RANK_ROWS_LIMIT` raw rows (the latest steps unless the page asks
  for a range: zooming a curve picks it);
* the latest attempt of a repeated step wins (``argMax(..., attempt)``); runs without
  repeated steps skip that grouping (the bounds query says whether any exists).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: The most raw per-rank rows one per-rank chart reads (ranks x steps of its window).
RANK_ROWS_LIMIT = 2_000_000
DEFAULT_POINTS = 600
MAX_POINTS = 5_000

RUNS_SQL = """
SELECT run_id, team, project, run_name, status, world_size, task_type, model_name,
       toUnixTimestamp64Micro(started_at) / 1e6 AS started_at,
       if(isNull(ended_at), NULL, toUnixTimestamp64Micro(assumeNotNull(ended_at)) / 1e6) AS ended_at,
       toUnixTimestamp64Micro(updated_at) / 1e6 AS updated_at
FROM rankstream.runs FINAL
WHERE ({want_team:String} = '' OR team = {want_team:String})
  AND ({want_project:String} = '' OR project = {want_project:String})
  AND ({want_status:String} = '' OR status = {want_status:String})
  AND ({since_s:UInt64} = 0 OR updated_at >= now64(6) - toIntervalSecond({since_s:UInt64}))
  AND ({run_ids:Array(String)} = [] OR has({run_ids:Array(String)}, run_id))
ORDER BY started_at DESC, run_id
LIMIT {limit:UInt32}
"""

LAST_STEPS_SQL = """
SELECT run_id, argMax(step, ts_last) AS last_step
FROM rankstream.steps
WHERE run_id IN {run_ids:Array(String)}
GROUP BY run_id
"""

# An alert is firing until a row of the same alert_id with state 'resolved' exists
# ('' is a row stored before resolution existed: firing).
FIRING_SQL = """
SELECT run_id, count() AS firing
FROM rankstream.alerts FINAL
WHERE run_id IN {run_ids:Array(String)} AND state != 'resolved'
  AND alert_id NOT IN (
      SELECT alert_id FROM rankstream.alerts WHERE run_id IN {run_ids:Array(String)} AND state = 'resolved'
  )
GROUP BY run_id
"""

RUN_METRICS_SQL = """
SELECT DISTINCT metric FROM rankstream.step_metrics WHERE run_id = {run_id:String} ORDER BY metric
"""

SERIES_BOUNDS_SQL = """
SELECT min(step), max(step), max(attempt), count()
FROM rankstream.step_metrics
WHERE has({run_ids:Array(String)}, run_id) AND has({metrics:Array(String)}, metric)
"""

# {source} is the step_metrics rows of the chosen runs and metrics, one per step (see _latest_attempt).
SERIES_SQL = """
SELECT metric, intDiv(step - {lo:Int64}, {width:Int64}) AS bucket,
       argMinIf(step, mean, isFinite(mean)) AS step_lo, minIf(mean, isFinite(mean)) AS mean_lo,
       argMaxIf(step, mean, isFinite(mean)) AS step_hi, maxIf(mean, isFinite(mean)) AS mean_hi,
       minIf(min, isFinite(min)) AS band_lo, maxIf(max, isFinite(max)) AS band_hi,
       countIf(isFinite(mean)) AS finite, min(step) AS first_step, minIf(step, NOT isFinite(mean)) AS bad_step,
       countIf(NOT isFinite(mean)) AS bad
FROM {source}
GROUP BY metric, bucket
ORDER BY metric, bucket
"""

COMPARE_SQL = """
SELECT run_id, metric, intDiv(step - {lo:Int64}, {width:Int64}) AS bucket, avgIf(mean, isFinite(mean)) AS bucket_mean,
       countIf(isFinite(mean)) AS finite
FROM {source}
GROUP BY run_id, metric, bucket
ORDER BY run_id, metric, bucket
"""

_ALL_ATTEMPTS = """(
    SELECT run_id, metric, step, mean, min, max FROM rankstream.step_metrics FINAL
    WHERE has({run_ids:Array(String)}, run_id) AND has({metrics:Array(String)}, metric)
      AND step BETWEEN {lo:Int64} AND {hi:Int64}
)"""

_LATEST_ATTEMPT = """(
    SELECT run_id, metric, step, argMax(mean, attempt) AS mean, argMax(min, attempt) AS min,
           argMax(max, attempt) AS max
    FROM rankstream.step_metrics FINAL
    WHERE has({run_ids:Array(String)}, run_id) AND has({metrics:Array(String)}, metric)
      AND step BETWEEN {lo:Int64} AND {hi:Int64}
    GROUP BY run_id, metric, step
)"""

RANK_BOUNDS_SQL = """
SELECT min(step), max(step), max(world_size)
FROM rankstream.steps
WHERE run_id = {run_id:String}
"""

# max() is unchanged by a duplicate row, so the raw table is read without FINAL.
RANK_SQL = """
SELECT rank, intDiv(step - {lo:Int64}, {width:Int64}) AS bucket, max(value) AS top_value
FROM rankstream.metrics
WHERE run_id = {run_id:String} AND metric = {metric:String} AND kind = 'step'
  AND step BETWEEN {lo:Int64} AND {hi:Int64} AND isFinite(value)
GROUP BY rank, bucket
ORDER BY rank, bucket
"""

ALERTS_SQL = """
SELECT alert_id, rule, severity, step, ranks, toUnixTimestamp64Micro(ts) / 1e6 AS ts, state, resolved_step,
       message, evidence
FROM rankstream.alerts FINAL
WHERE run_id = {run_id:String}
ORDER BY ts, alert_id, state
"""


def series_sql(latest_attempt_needed: bool) -> str:
    """The curve query, grouping repeated steps to their latest attempt only when the run has any."""
    return SERIES_SQL.replace("{source}", _LATEST_ATTEMPT if latest_attempt_needed else _ALL_ATTEMPTS)


def compare_sql(latest_attempt_needed: bool) -> str:
    return COMPARE_SQL.replace("{source}", _LATEST_ATTEMPT if latest_attempt_needed else _ALL_ATTEMPTS)


def clamp_points(points: int | None) -> int:
    """How many buckets a chart asks for, within sane limits."""
    return max(10, min(MAX_POINTS, points or DEFAULT_POINTS))


def bucket_width(lo: int, hi: int, points: int) -> int:
    """The width in steps of a bucket so that ``[lo, hi]`` makes at most ``points`` buckets."""
    return max(1, math.ceil((hi - lo + 1) / max(points, 1)))


@dataclass(frozen=True)
class Window:
    """The steps one per-rank chart covers and its bucket width; ``clipped`` when the run is longer."""

    lo: int
    hi: int
    width: int
    clipped: bool


def rank_window(lo: int, hi: int, world_size: int, points: int, want: tuple[int | None, int | None]) -> Window:
    """The per-rank window: the asked range (or the whole run), cut to its latest steps so that
    ranks x steps stays within :data:`RANK_ROWS_LIMIT` raw rows."""
    start = lo if want[0] is None else max(lo, want[0])
    end = hi if want[1] is None else min(hi, want[1])
    if end < start:
        start, end = end, start
    most_steps = max(1, RANK_ROWS_LIMIT // max(world_size, 1))
    clipped = end - start + 1 > most_steps
    if clipped:
        start = end - most_steps + 1
    return Window(start, end, bucket_width(start, end, points), clipped)


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def shape_series(rows: Iterable[Sequence[Any]], metrics: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """Rows of :data:`SERIES_SQL` -> per metric ``{step, mean, min, max, nonfinite}`` in step order.

    A bucket gives its lowest and highest mean at their own steps (one point when they are
    the same step); both carry the bucket's band. ``nonfinite`` lists the first step of each
    bucket whose mean was NaN or infinite (drawn as markers: a gap alone is easy to miss).
    """
    out: dict[str, dict[str, list[Any]]] = {
        m: {"step": [], "mean": [], "min": [], "max": [], "nonfinite": []} for m in metrics
    }
    for metric, _bucket, step_lo, mean_lo, step_hi, mean_hi, band_lo, band_hi, finite, first, bad_step, bad in rows:
        series = out.setdefault(metric, {"step": [], "mean": [], "min": [], "max": [], "nonfinite": []})
        if bad:
            series["nonfinite"].append(int(bad_step))
        lo_band, hi_band = _finite(band_lo), _finite(band_hi)
        points: list[tuple[int, float | None]]
        if not finite:
            points = [(int(first), None)]
        elif step_lo == step_hi:
            points = [(int(step_lo), _finite(mean_lo))]
        else:
            points = sorted([(int(step_lo), _finite(mean_lo)), (int(step_hi), _finite(mean_hi))])
        for step, mean in points:
            series["step"].append(step)
            series["mean"].append(mean)
            series["min"].append(lo_band)
            series["max"].append(hi_band)
    return out


def shape_compare(
    rows: Iterable[Sequence[Any]], run_ids: Sequence[str], metrics: Sequence[str], lo: int, width: int
) -> dict[str, Any]:
    """Rows of :data:`COMPARE_SQL` -> one shared step axis (bucket starts) and per metric one
    aligned list per run (``None`` where a run has no value in that bucket)."""
    values: dict[tuple[str, str], dict[int, float | None]] = {}
    buckets: set[int] = set()
    for run_id, metric, bucket, mean, finite in rows:
        values.setdefault((metric, run_id), {})[int(bucket)] = _finite(mean) if finite else None
        buckets.add(int(bucket))
    order = sorted(buckets)
    return {
        "step": [lo + b * width for b in order],
        "series": {m: {r: [values.get((m, r), {}).get(b) for b in order] for r in run_ids} for m in metrics},
    }


def shape_ranks(rows: Iterable[Sequence[Any]], window: Window, world_size: int) -> dict[str, Any]:
    """Rows of :data:`RANK_SQL` -> ``{step: bucket starts, ranks: [...], values: rank x bucket}``."""
    count = (window.hi - window.lo) // window.width + 1
    grid: dict[int, list[float | None]] = {}
    for rank, bucket, value in rows:
        grid.setdefault(int(rank), [None] * count)[int(bucket)] = _finite(value)
    ranks = sorted(set(grid) | set(range(world_size)))
    return {
        "step": [window.lo + b * window.width for b in range(count)],
        "ranks": ranks,
        "values": [grid.get(r, [None] * count) for r in ranks],
        "window": {"lo": window.lo, "hi": window.hi, "width": window.width, "clipped": window.clipped},
    }


def pair_alerts(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """Rows of :data:`ALERTS_SQL` -> one entry per alert: firing, or resolved with the step it ended at."""
    import orjson

    alerts: dict[str, dict[str, Any]] = {}
    for alert_id, rule, severity, step, ranks, ts, state, resolved_step, message, evidence in rows:
        if state == "resolved":
            entry = alerts.setdefault(
                alert_id,
                {
                    "alert_id": alert_id,
                    "rule": rule,
                    "severity": severity,
                    "step": int(step),
                    "ranks": list(ranks),
                    "ts": ts,
                    "message": message,
                    "evidence": _json(orjson, evidence),
                },
            )
            entry["state"] = "resolved"
            entry["resolved_step"] = int(resolved_step)
            entry["resolved_ts"] = ts
            entry["resolution"] = message
            continue
        entry = alerts.get(alert_id, {})
        entry.update(
            alert_id=alert_id,
            rule=rule,
            severity=severity,
            step=int(step),
            ranks=list(ranks),
            ts=ts,
            message=message,
            evidence=_json(orjson, evidence),
        )
        entry.setdefault("state", "firing")
        entry.setdefault("resolved_step", None)
        alerts[alert_id] = entry
    return sorted(alerts.values(), key=lambda a: (a["step"], a["ts"], a["alert_id"]))


def _json(orjson: Any, text: str) -> Any:
    try:
        return orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return text
