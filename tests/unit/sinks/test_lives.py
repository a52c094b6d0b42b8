"""One run, many lives in the sink's rows: incarnations and attempts in the keys, and the ``lost`` run status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rankstream.schema import decode_event, encode_event
from rankstream.sinks.records import Batch, InvalidRecord, validate_alert, validate_step
from rankstream.sinks.runs import (
    RunCache,
    merge_run_start,
    run_row_from_end,
    run_row_from_start,
    run_row_lost,
    run_row_revived,
)
from rankstream.sinks.store.tables import column_names
from rankstream.sinks.writer import BatchWriter, Item


def _event(kind: str = "step", ts: float = 100.0, run_id: str = "r", **over: Any) -> dict[str, Any]:
    ev = {
        "v": 1, "kind": kind, "run_id": run_id, "rank": 0, "world_size": 2, "host": "h", "step": 3,
        "ts": ts, "seq": 0, "metrics": {"loss": 1.5} if kind == "step" else {}, "tags": {},
    }  # fmt: skip
    if kind == "run_start":
        ev["meta"] = {"team": "vision", "run_name": "n"}
    ev.update(over)
    return decode_event(encode_event(ev))


def _alert(ts: float, run_id: str = "r", rule: str = "run_lost") -> dict[str, Any]:
    return validate_alert(
        {
            "v": 1, "alert_id": f"{run_id}-{rule}-{ts}", "run_id": run_id, "team": "vision", "rule": rule,
            "severity": "critical", "step": 3, "ranks": [0, 1], "ts": ts, "message": "m", "evidence": {},
        }
    )  # fmt: skip


def _step(**over: Any) -> dict[str, Any]:
    rec = {
        "v": 1, "run_id": "r", "step": 3, "world_size": 2, "ranks_reported": 2, "missing_ranks": [],
        "complete": True, "ts_first": 1.0, "ts_last": 2.0, "nonfinite": {},
        "metrics": {"loss": {"mean": 1.0, "min": 0.5, "max": 1.5, "std": 0.5, "argmin": 0, "argmax": 1, "n": 2}},
    }  # fmt: skip
    rec.update(over)
    return rec


def _columns(batch: Batch, table: str) -> dict[str, list[Any]]:
    return dict(zip(column_names(table), batch.columns[table], strict=True))


def test_events_and_metrics_rows_carry_the_incarnation() -> None:
    old, new = _event(), _event(inc="7f3a9c0e12d4")  # the same (run, rank, seq) in two launches
    assert old["inc"] == "" and new["inc"] == "7f3a9c0e12d4"
    row_by_row, bulk = Batch(), Batch()
    for event in (old, new):
        row_by_row.add_event(event, "t")
    bulk.add_events([old, new], ["t", "t"])
    for batch in (row_by_row, bulk):
        events, metrics = _columns(batch, "events"), _columns(batch, "metrics")
        assert events["inc"] == ["", "7f3a9c0e12d4"] and events["seq"] == [0, 0]
        assert metrics["inc"] == ["", "7f3a9c0e12d4"] and metrics["value"] == [1.5, 1.5]


def test_steps_and_step_metrics_rows_carry_the_attempt_from_restart() -> None:
    batch = Batch()
    batch.add_step(validate_step(_step()), "t")
    batch.add_step(validate_step(_step(restart=2, ranks_reported=1)), "t")
    steps, step_metrics = _columns(batch, "steps"), _columns(batch, "step_metrics")
    assert steps["attempt"] == [0, 2] and steps["step"] == [3, 3] and steps["ranks_reported"] == [2, 1]
    assert step_metrics["attempt"] == [0, 2] and step_metrics["n"] == [2, 2]
    assert [json.loads(extra) for extra in steps["extra"]] == [{"nonfinite": {}}] * 2  # restart is a column now


@pytest.mark.parametrize("restart", [-1, 2**32, "1", 1.5, True])
def test_a_restart_the_attempt_column_cannot_hold_is_refused(restart: object) -> None:
    with pytest.raises(InvalidRecord, match="'restart'"):
        validate_step(_step(restart=restart))


def test_run_lost_marks_a_running_run_and_never_an_ended_one() -> None:
    start = run_row_from_start(_event("run_start", ts=100.0))
    lost = run_row_lost(start, _alert(ts=200.0))
    assert lost is not None and lost["status"] == "lost" and lost["updated_at"] == 200_000_000
    assert lost["ended_at"] is None and lost["team"] == "vision" and lost["run_name"] == "n"
    assert run_row_lost(lost, _alert(ts=300.0)) is None  # already lost: nothing to write
    ended = {**start, "status": "failed", "ended_at": 150_000_000, "updated_at": 150_000_000}
    assert run_row_lost(ended, _alert(ts=200.0)) is None  # run_end seen: finished/failed win
    unknown = run_row_lost(None, _alert(ts=200.0, run_id="other"))
    assert unknown is not None and unknown["status"] == "lost" and unknown["team"] == "vision"
    assert unknown["world_size"] == 2
    skewed = run_row_lost({**start, "updated_at": 250_000_000}, _alert(ts=200.0))
    assert skewed is not None and skewed["updated_at"] == 250_000_001  # the version still grows


def test_only_an_event_stamped_after_the_alert_brings_a_lost_run_back() -> None:
    lost = run_row_lost(run_row_from_start(_event("run_start", ts=100.0)), _alert(ts=200.0))
    assert lost is not None
    assert run_row_revived(lost, _event(ts=150.0)) is None  # a backlog of the first launch
    back = run_row_revived(lost, _event(ts=260.0))
    assert back is not None and back["status"] == "running" and back["updated_at"] == 260_000_000
    assert run_row_revived(back, _event(ts=270.0)) is None  # running already
    relaunch = merge_run_start(lost, run_row_from_start(_event("run_start", ts=300.0, inc="b")))
    assert relaunch["status"] == "running" and relaunch["started_at"] == 100_000_000
    replayed = merge_run_start(lost, run_row_from_start(_event("run_start", ts=100.0)))
    assert replayed["status"] == "lost"


def test_run_cache_tracks_lost_runs_through_updates_and_eviction() -> None:
    cache = RunCache(capacity=2)
    start = run_row_from_start(_event("run_start"))
    lost = run_row_lost(start, _alert(ts=200.0))
    assert lost is not None
    cache.put(lost)
    assert cache.lost == {"r"}
    cache.put({**lost, "status": "running"})
    assert cache.lost == set()
    cache.put(lost)
    cache.put({**start, "run_id": "x"})
    cache.put({**start, "run_id": "y"})  # evicts "r"
    assert "r" not in cache and cache.lost == set()


def _runs(batch: Batch) -> list[tuple[str, str, int]]:
    runs = _columns(batch, "runs")
    return list(zip(runs["run_id"], runs["status"], runs["updated_at"], strict=True))


def test_the_writer_applies_run_status_changes_in_message_order() -> None:
    writer = BatchWriter()
    first: list[Item] = [("event", _event("run_start", ts=100.0)), ("event", _event(ts=110.0))]
    assert _runs(writer.build(first)) == [("r", "running", 100_000_000)]
    # the alert, then a backlog event of the dead launch: still lost, one row for the run
    batch = writer.build([("alert", _alert(ts=200.0)), ("event", _event(ts=150.0, seq=1))])
    assert _runs(batch) == [("r", "lost", 200_000_000)] and batch.count("alerts") == 1
    assert writer.runs.lost == {"r"}
    assert _runs(writer.build([("event", _event(ts=190.0, seq=2))])) == []
    # the job came back: an event stamped after the alert
    assert _runs(writer.build([("event", _event(ts=260.0, seq=3))])) == [("r", "running", 260_000_000)]
    assert writer.runs.lost == set()
    # lost again, then a relaunch's run_start in the same batch: running; then run_end: finished
    batch = writer.build([("alert", _alert(ts=400.0)), ("event", _event("run_start", ts=500.0, inc="b"))])
    assert _runs(batch) == [("r", "running", 500_000_000)]
    batch = writer.build([("event", _event("run_end", ts=600.0, inc="b", seq=1)), ("alert", _alert(ts=700.0))])
    assert _runs(batch) == [("r", "finished", 600_000_000)]
    assert _runs(writer.build([("alert", _alert(ts=800.0, rule="rank_silent"))])) == []


def test_a_run_lost_alert_makes_the_writer_look_the_run_up() -> None:
    writer = BatchWriter()
    items: list[Item] = [("alert", _alert(ts=200.0, run_id="a")), ("alert", _alert(ts=200.0, run_id="b", rule="x"))]
    assert writer.unknown_runs(items) == ["a"]


def test_run_end_status_comes_from_the_producers_tags_and_the_most_telling_wins() -> None:
    start = run_row_from_start(_event("run_start", ts=100.0))
    finished = run_row_from_end(start, _event("run_end", ts=200.0, tags={"status": "finished", "reason": "normal"}))
    assert finished["status"] == "finished"
    failed = run_row_from_end(finished, _event("run_end", ts=201.0, rank=1, tags={"status": "failed"}))
    assert failed["status"] == "failed" and failed["ended_at"] == 201_000_000
    # A third rank ending normally after that does not hide the failure of the launch.
    assert run_row_from_end(failed, _event("run_end", ts=202.0, tags={"status": "finished"}))["status"] == "failed"
    terminated = run_row_from_end(
        start, _event("run_end", ts=200.0, tags={"status": "terminated", "reason": "SIGTERM"})
    )
    assert terminated["status"] == "terminated"
    legacy = run_row_from_end(start, _event("run_end", ts=200.0, meta={"status": "failed"}))
    assert legacy["status"] == "failed"


def test_a_relaunch_stamped_after_the_run_ended_reopens_it_and_a_backlog_run_start_does_not() -> None:
    start = run_row_from_start(_event("run_start", ts=100.0))
    ended = run_row_from_end(start, _event("run_end", ts=200.0, tags={"status": "terminated"}))
    backlog = merge_run_start(ended, run_row_from_start(_event("run_start", ts=100.5, rank=1)))
    assert (backlog["status"], backlog["ended_at"]) == ("terminated", 200_000_000)
    relaunch = merge_run_start(ended, run_row_from_start(_event("run_start", ts=500.0)))
    assert (relaunch["status"], relaunch["ended_at"], relaunch["started_at"]) == ("running", None, 100_000_000)
