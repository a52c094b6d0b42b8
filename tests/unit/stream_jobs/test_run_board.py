"""The worker's /metrics: per-run gauges from steps and alerts, bounded in runs and ranks, expiring."""

from __future__ import annotations

import math

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rankstream.stream_jobs.prom import PipelineHealth, WorkerMetrics
from rankstream.stream_jobs.run_board import RunBoard


def _step(run_id: str, step: int, ts: float, loss: float | str = 2.0, slow_rank: int = 3) -> dict:
    return {
        "run_id": run_id,
        "step": step,
        "ts_last": ts,
        "world_size": 4,
        "ranks_reported": 4,
        "metrics": {
            "loss": {"mean": loss},
            "grad_norm": {"mean": 0.5},
            "step_time_s": {"mean": 1.0, "max": 1.5, "argmax": slow_rank},
        },
    }


def _alert(run_id: str, alert_id: str, rule: str, ranks: list[int], state: str = "firing") -> dict:
    return {
        "alert_id": alert_id,
        "run_id": run_id,
        "rule": rule,
        "severity": "warning",
        "ranks": ranks,
        "team": "t",
        "state": state,
        "evidence": {"score": 0.7},
    }


def _samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _metrics(board: RunBoard) -> WorkerMetrics:
    return WorkerMetrics(
        board, PipelineHealth(lambda: {"events": 7}, lambda: {"held_messages": 3.0}, {("p.events", 0): 11})
    )


def test_a_run_shows_its_newest_step_loss_rate_and_slowest_rank() -> None:
    board = RunBoard()
    board.observe([_step("r", 10, 100.0), _step("r", 20, 110.0, loss=1.5)], [], now=1.0, labels=lambda r: ("name", "t"))
    samples = _samples(_metrics(board))
    run = (("run_id", "r"), ("run_name", "name"), ("team", "t"))
    assert samples[("rankstream_run_last_step", run)] == 20
    assert samples[("rankstream_run_loss", run)] == 1.5
    assert samples[("rankstream_run_steps_per_second", run)] == 1.0
    assert samples[("rankstream_run_rank_straggler_score", tuple(sorted((*run, ("rank", "3")))))] == 1.5
    assert samples[("rankstream_worker_events_total", ())] == 7
    assert samples[("rankstream_worker_consumer_lag", (("partition", "0"), ("topic", "p.events")))] == 11


def test_a_nan_loss_shows_as_nan() -> None:
    board = RunBoard()
    board.observe([_step("r", 1, 1.0, loss="nan")], [], now=1.0)
    [view] = board.snapshot()
    assert view.loss_mean is not None and math.isnan(view.loss_mean)


def test_firing_alerts_count_until_resolved_and_silent_ranks_are_not_alive() -> None:
    board = RunBoard()
    board.observe(
        [_step("r", 1, 1.0)], [_alert("r", "a1", "rank_silent", [2]), _alert("r", "a2", "loss_spike", [])], 1.0
    )
    [view] = board.snapshot()
    assert view.ranks_alive() == 3 and len(view.firing) == 2
    board.observe([], [_alert("r", "a1", "rank_silent", [2], state="resolved")], 2.0)
    [view] = board.snapshot()
    assert view.ranks_alive() == 4 and list(view.firing) == ["a2"]


def test_runs_expire_and_the_board_is_bounded_in_runs_and_ranks() -> None:
    board = RunBoard(ttl_s=60, max_runs=3, max_ranks=2)
    for i in range(5):
        board.observe([_step(f"r{i}", 1, 1.0, slow_rank=i)], [], now=float(i))
    board.observe([_step("r4", 2, 2.0, slow_rank=9), _step("r4", 3, 3.0, slow_rank=8)], [], now=5.0)
    assert board.expire(now=10.0) == 2
    assert sorted(v.run_id for v in board.snapshot()) == ["r2", "r3", "r4"]
    [r4] = [v for v in board.snapshot() if v.run_id == "r4"]
    assert len(r4.straggler_score) == 2
    assert board.expire(now=200.0) == 3 and board.snapshot() == []
