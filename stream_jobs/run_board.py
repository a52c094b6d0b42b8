"""What the worker's ``/metrics`` shows per run: the latest numbers of each live run, bounded.

Why a board of its own instead of Prometheus gauges set in the hot path: label sets
must be bounded (a worker sees thousands of runs over weeks, a run up to 65,536
ranks), runs that ended must drop out, and the stream must not pay for a scrape.
The drain updates plain objects per batch; the scrape thread reads a snapshot.

Pure bookkeeping: time comes in as arguments.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

#: A run not updated for this long (wall seconds) leaves the board, with its series.
DEFAULT_TTL_S = 600.0
#: At most this many runs are shown (the least recently updated leave first).
DEFAULT_MAX_RUNS = 2000
#: At most this many ranks per run get a per-rank straggler series (the slowest).
DEFAULT_MAX_RANKS = 16
#: Rules whose firing alerts name ranks that are not alive.
_NOT_ALIVE_RULES = frozenset({"rank_silent", "rank_hung", "run_lost"})


@dataclass
class RunView:
    """The latest known state of one run."""

    run_id: str
    run_name: str = ""
    team: str = ""
    last_step: int = -1
    step_ts: float = 0.0
    steps_per_s: float = 0.0
    loss_mean: float | None = None
    grad_norm: float | None = None
    world_size: int = 0
    ranks_reporting: int = 0
    #: rank -> own step time / the step's mean (the slowest ranks of recent steps and firing stragglers).
    straggler_score: dict[int, float] = field(default_factory=dict)
    #: alert_id -> (rule, severity, ranks) of alerts firing and not resolved.
    firing: dict[str, tuple[str, str, tuple[int, ...]]] = field(default_factory=dict)
    updated: float = 0.0

    def ranks_alive(self) -> int:
        down = {r for rule, _, ranks in self.firing.values() if rule in _NOT_ALIVE_RULES for r in ranks}
        return max(self.world_size - len(down), 0)


class RunBoard:
    """Per-run views updated from the worker's results; ``snapshot()`` is safe from another thread."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_runs: int = DEFAULT_MAX_RUNS,
        max_ranks: int = DEFAULT_MAX_RANKS,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_runs = max_runs
        self._max_ranks = max_ranks
        #: (team, run_id) -> view: two teams may use the same run_id (a shared worker serves both).
        self._runs: dict[tuple[str, str], RunView] = {}
        self._lock = threading.Lock()

    def observe(
        self,
        steps: list[dict[str, Any]],
        alerts: list[dict[str, Any]],
        now: float,
        labels: Any = None,
        *,
        team: str = "",
    ) -> None:
        """Take a batch's aligned steps and alerts; ``labels(run_id)`` gives ``(run_name, team)`` or None.

        ``team``: the team of the topic they came from (a shared worker's lane), which wins over ``labels``'."""
        if not steps and not alerts:
            return
        with self._lock:
            for step in steps:
                view = self._view(team, step["run_id"], now, labels)
                self._take_step(view, step)
            for alert in alerts:
                view = self._view(team, alert["run_id"], now, labels)
                self._take_alert(view, alert)

    def expire(self, now: float) -> int:
        """Drop runs not updated within the TTL, then the oldest beyond ``max_runs``; returns how many left."""
        with self._lock:
            stale = [key for key, v in self._runs.items() if now - v.updated > self._ttl_s]
            for key in stale:
                del self._runs[key]
            extra = len(self._runs) - self._max_runs
            if extra > 0:
                oldest = sorted(self._runs.items(), key=lambda kv: kv[1].updated)[:extra]
                for key, _ in oldest:
                    del self._runs[key]
            return len(stale) + max(extra, 0)

    def snapshot(self) -> list[RunView]:
        """Copies of the views (the scrape thread reads these while the drain goes on)."""
        with self._lock:
            return [
                RunView(**{**v.__dict__, "straggler_score": dict(v.straggler_score), "firing": dict(v.firing)})
                for v in self._runs.values()
            ]

    # ------------------------------------------------------------------ helpers

    def _view(self, team: str, run_id: str, now: float, labels: Any) -> RunView:
        view = self._runs.get((team, run_id))
        if view is None:
            view = self._runs[(team, run_id)] = RunView(run_id, team=team)
        if labels is not None and not view.run_name:
            named = labels(run_id)
            if named:
                view.run_name, view.team = named[0], team or named[1]
        view.updated = now
        return view

    def _take_step(self, view: RunView, step: dict[str, Any]) -> None:
        number, ts = int(step["step"]), float(step.get("ts_last") or 0.0)
        if number > view.last_step:
            if view.last_step >= 0 and ts > view.step_ts:
                rate = (number - view.last_step) / (ts - view.step_ts)
                view.steps_per_s = rate if view.steps_per_s == 0.0 else 0.8 * view.steps_per_s + 0.2 * rate
            view.last_step, view.step_ts = number, ts
            metrics = step.get("metrics") or {}
            view.loss_mean = _mean(metrics, "loss", view.loss_mean)
            view.grad_norm = _mean(metrics, "grad_norm", view.grad_norm)
            view.world_size = int(step.get("world_size") or view.world_size)
            view.ranks_reporting = int(step.get("ranks_reported") or 0)
            self._take_slowest(view, metrics)

    def _take_slowest(self, view: RunView, metrics: dict[str, Any]) -> None:
        summary = metrics.get("step_time_s") or metrics.get("compute_time_s")
        if not isinstance(summary, dict):
            return
        mean, top, rank = summary.get("mean"), summary.get("max"), summary.get("argmax")
        if isinstance(mean, int | float) and isinstance(top, int | float) and isinstance(rank, int) and mean > 0:
            view.straggler_score[rank] = float(top) / float(mean)
            self._bound_ranks(view)

    def _take_alert(self, view: RunView, alert: dict[str, Any]) -> None:
        alert_id, rule = str(alert.get("alert_id", "")), str(alert.get("rule", ""))
        if alert.get("state", "firing") == "resolved":
            view.firing.pop(alert_id, None)
            return
        ranks = tuple(int(r) for r in alert.get("ranks") or ())
        view.firing[alert_id] = (rule, str(alert.get("severity", "")), ranks)
        if not view.team and isinstance(alert.get("team"), str):
            view.team = alert["team"]
        score = (alert.get("evidence") or {}).get("score")  # the straggler rule's score: median / own time
        if rule == "straggler" and isinstance(score, int | float) and score > 0 and len(ranks) == 1:
            view.straggler_score[ranks[0]] = 1.0 / float(score)
            self._bound_ranks(view)

    def _bound_ranks(self, view: RunView) -> None:
        if len(view.straggler_score) > self._max_ranks:
            keep = sorted(view.straggler_score.items(), key=lambda kv: kv[1], reverse=True)[: self._max_ranks]
            view.straggler_score = dict(keep)


_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _mean(metrics: dict[str, Any], name: str, default: float | None) -> float | None:
    """The step's mean of ``name`` (NaN and infinities as the contract writes them), else ``default``."""
    summary = metrics.get(name)
    if not isinstance(summary, dict):
        return default
    mean = summary.get("mean")
    if isinstance(mean, int | float):
        return float(mean)
    return _NONFINITE.get(mean, default) if isinstance(mean, str) else default


__all__ = ["RunBoard", "RunView"]
