"""Pure pieces of the sink: record validation and conversion, tokens, DSNs, HTTP request parsing, CLI output."""

from __future__ import annotations

import json
import math

import pytest

from rankstream.cli.runs import parse_since
from rankstream.cli.sql import render
from rankstream.schema import decode_event, encode_event
from rankstream.sinks.records import Batch, InvalidRecord, validate_alert, validate_step
from rankstream.sinks.runs import RunCache, run_row_from_end, run_row_from_start
from rankstream.sinks.store import StoreError, parse_dsn
from rankstream.sinks.store.http_request import QueryError, Request
from rankstream.sinks.store.migrations import migration_files, split_statements
from rankstream.sinks.store.query import error_line, statement_kind
from rankstream.sinks.store.tables import COLUMNS, column_names
from rankstream.sinks.writer import batch_token


def _event(**over: object) -> dict:
    ev = {
        "v": 1, "kind": "step", "run_id": "r", "rank": 1, "world_size": 2, "host": "h", "step": 3,
        "ts": 100.5, "seq": 7, "metrics": {"loss": 1.5, "grad_norm": "nan"}, "tags": {"stage": "warm"},
    }  # fmt: skip
    ev.update(over)
    return decode_event(encode_event(ev))


def _step(**over: object) -> dict:
    rec = {
        "v": 1, "run_id": "r", "step": 3, "world_size": 2, "ranks_reported": 1, "missing_ranks": [1],
        "complete": False, "ts_first": 1.0, "ts_last": 2.0,
        "metrics": {"loss": {"mean": 1.0, "min": 0.5, "max": "inf", "std": None, "argmin": 0, "argmax": 1, "n": 1}},
    }  # fmt: skip
    rec.update(over)
    return rec


def test_event_becomes_one_event_row_and_one_metric_row_per_metric() -> None:
    batch = Batch()
    batch.add_event(_event(), team="vision")
    assert batch.count("events") == 1 and batch.count("metrics") == 2 and batch.rows == 3
    metrics = dict(zip(column_names("metrics"), batch.columns["metrics"], strict=True))
    assert metrics["metric"] == ["loss", "grad_norm"]
    assert metrics["value"][0] == 1.5 and math.isnan(metrics["value"][1])
    assert metrics["team"] == ["vision", "vision"] and metrics["seq"] == [7, 7]
    assert metrics["ts"] == [100_500_000, 100_500_000]
    events = dict(zip(column_names("events"), batch.columns["events"], strict=True))
    assert events["tags"] == [{"stage": "warm"}] and events["n_metrics"] == [2]
    assert all(len(col) == batch.count(t) for t in COLUMNS for col in batch.columns[t])


def test_step_record_keeps_unknown_fields_and_non_finite_aggregates() -> None:
    rec = validate_step(_step(nonfinite={"loss": 2}))
    batch = Batch()
    batch.add_step(rec, team="t")
    steps = dict(zip(column_names("steps"), batch.columns["steps"], strict=True))
    assert json.loads(steps["extra"][0]) == {"nonfinite": {"loss": 2}}
    sm = dict(zip(column_names("step_metrics"), batch.columns["step_metrics"], strict=True))
    assert sm["max"] == [math.inf] and math.isnan(sm["std"][0])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"v": 2}, "unsupported schema version"),
        ({"step": "3"}, "'step' must be an integer"),
        ({"complete": 1}, "'complete' must be a boolean"),
        ({"missing_ranks": [-1]}, "missing_ranks"),
        ({"ts_first": "nan"}, "'ts_first'"),
        ({"metrics": {"loss": 3}}, "aggregates"),
        ({"run_id": ""}, "run_id"),
        # values the store's columns cannot hold: rejected (DLQ), not retried forever
        ({"step": 2**63}, "'step' must be <= "),
        ({"world_size": 2**32}, "'world_size' must be <= 65536"),
        ({"missing_ranks": [2**32]}, "missing_ranks"),
        ({"metrics": {"loss": {"mean": 1.0, "n": 2**33}}}, "'n' must be an integer in"),
    ],
)
def test_invalid_steps_have_one_line_reasons(change: dict, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason) as info:
        validate_step(_step(**change))
    assert "\n" not in info.value.reason


def test_alert_validation() -> None:
    alert = {
        "v": 1, "alert_id": "a1", "run_id": "r", "team": "t", "rule": "straggler", "severity": "warning",
        "step": 4, "ranks": [3], "ts": 5.0, "message": "slow", "evidence": {"x": 1},
    }  # fmt: skip
    batch = Batch()
    batch.add_alert(validate_alert(alert))
    row = dict(zip(column_names("alerts"), [c[0] for c in batch.columns["alerts"]], strict=True))
    assert row["evidence"] == '{"x":1}' and row["ranks"] == [3] and row["ts"] == 5_000_000
    with pytest.raises(InvalidRecord, match="alert_id"):
        validate_alert({**alert, "alert_id": None})
    with pytest.raises(InvalidRecord, match="evidence"):
        validate_alert({**alert, "evidence": [1]})
    with pytest.raises(InvalidRecord, match="'step' must be <= "):
        validate_alert({**alert, "step": 2**64})
    with pytest.raises(InvalidRecord, match="ranks"):
        validate_alert({**alert, "ranks": [2**40]})


def test_runs_rows_keep_metadata_through_run_end() -> None:
    start = run_row_from_start(_event(kind="run_start", step=-1, meta={"team": "nlp", "run_name": "n", "config": {}}))
    assert start["team"] == "nlp" and start["status"] == "running" and start["config"] == "{}"
    cache = RunCache(capacity=2)
    cache.put(start)
    end = run_row_from_end(cache.get("r"), _event(kind="run_end", ts=200.0))
    assert end["team"] == "nlp" and end["status"] == "finished" and end["ended_at"] == 200_000_000
    assert end["updated_at"] > start["updated_at"]
    for i in range(3):
        cache.put({**start, "run_id": f"x{i}"})
    assert "r" not in cache and cache.team("x2") == "nlp"  # bounded


def test_batch_token_is_deterministic_and_range_sensitive() -> None:
    a = batch_token({("t.events", 0): (0, 9), ("t.steps", 1): (5, 6)})
    assert a == batch_token({("t.steps", 1): (5, 6), ("t.events", 0): (0, 9)})
    assert a != batch_token({("t.events", 0): (0, 10), ("t.steps", 1): (5, 6)})


def test_dsn_parsing() -> None:
    assert parse_dsn("chdb:///tmp/x/store").embedded
    assert not parse_dsn("https://u:p@h:8443/db").embedded
    for bad, reason in [("", "empty"), ("chdb://host/x", "three slashes"), ("mysql://h", "unsupported scheme")]:
        with pytest.raises(StoreError, match=reason):
            parse_dsn(bad)


def test_http_request_parsing() -> None:
    req = Request({"query": "SELECT 1", "database": "rankstream", "max_threads": "2", "param_x": "5"}, b"")
    assert req.sql == "SELECT 1" and req.output_format() == "TabSeparated"
    assert req.settings == {"max_threads": "2"} and req.bind == {"x": "5"} and req.database == "rankstream"
    native = Request({}, b"INSERT INTO t (a, b) FORMAT Native\n\x00\x01\xff")
    assert native.sql == "INSERT INTO t (a, b)" and native.insert_format == "Native" and native.data == b"\x00\x01\xff"
    split = Request({"query": "INSERT INTO t FORMAT CSV"}, b"1,2\n")
    assert split.data == b"1,2\n" and split.output_format() is None
    assert Request({"default_format": "JSON"}, b"SELECT 2").output_format() == "JSON"
    assert Request({}, b"SELECT 2 FORMAT RowBinaryWithNamesAndTypes").output_format() == "RowBinaryWithNamesAndTypes"
    assert Request({}, b"CREATE TABLE x (a Int8) ENGINE = Memory").output_format() is None
    with pytest.raises(QueryError):
        Request({}, b"  ")
    with pytest.raises(QueryError, match="Unknown setting"):
        Request({"query": "SELECT 1", "bad name": "1"}, b"")


def test_statement_kinds_and_error_lines() -> None:
    assert statement_kind("-- c\nselect 1") == "query"
    assert statement_kind("WITH 1 AS x SELECT x FORMAT CSV;") == "raw"
    assert statement_kind("OPTIMIZE TABLE rankstream.metrics FINAL") == "command"
    raw = (
        "Received ClickHouse exception, code: 62, server response: "
        "Code: 62. DB::Exception: Syntax error\n at x (for url http://h)"
    )
    assert error_line(Exception(raw)) == "Code: 62. DB::Exception: Syntax error at x"


def test_render_formats() -> None:
    rows = [(1, math.nan, "a"), (2, 0.5, "b,c")]
    assert json.loads(render(["n", "x", "s"], rows, "json")) == [
        {"n": 1, "x": "nan", "s": "a"},
        {"n": 2, "x": 0.5, "s": "b,c"},
    ]
    assert render(["n", "x", "s"], rows, "csv").splitlines() == ["n,x,s", "1,nan,a", '2,0.5,"b,c"']
    table = render(["n", "x", "s"], rows, "table").splitlines()
    assert table[0].split() == ["n", "x", "s"] and table[-1] == "(2 rows)"


def test_since_parsing() -> None:
    assert parse_since("7d") == 7 * 86_400 and parse_since("12h") == 43_200 and parse_since("2w") == 1_209_600
    with pytest.raises(ValueError, match="expected a number and a unit"):
        parse_since("yesterday")


def test_migrations_are_ordered_and_split() -> None:
    files = migration_files()
    assert [v for v, _ in files] == sorted(v for v, _ in files) and files[0][0] == "0001_init"
    statements = split_statements(files[0][1])
    assert statements[0] == "CREATE DATABASE IF NOT EXISTS rankstream"
    assert all("IF NOT EXISTS" in s for s in statements)
    assert sum(s.startswith("CREATE TABLE") for s in statements) == len(COLUMNS)


def test_bulk_events_match_row_by_row_events() -> None:
    events = [
        _event(),
        _event(run_id="r2", rank=0, seq=8, metrics={"loss": 2.0}, inc="b0"),
        _event(kind="heartbeat", metrics={}, tags={}),
        _event(kind="run_start", step=-1, host="h2", metrics={}),
        _event(step=4, ts=101.25, metrics={"lr": 0.1, "loss": "inf", "x": 3}, inc="a1"),
    ]
    teams = ["vision", "nlp", "vision", "", "vision"]
    row_by_row, bulk = Batch(), Batch()
    for event, team in zip(events, teams, strict=True):
        row_by_row.add_event(event, team)
    bulk.add_events(events, teams)
    assert bulk.rows == row_by_row.rows == 5 + 2 + 1 + 3
    for table in COLUMNS:
        for a, b in zip(bulk.columns[table], row_by_row.columns[table], strict=True):
            assert [str(x) for x in a] == [str(x) for x in b]  # str: nan == nan
    same = Batch()
    same.add_events(events[:1] * 3, ["t"] * 3)  # constant columns take the fast path
    assert same.columns["metrics"][0] == ["t"] * 6 and same.rows == 9
    incs = dict(zip(column_names("metrics"), bulk.columns["metrics"], strict=True))["inc"]
    assert incs == ["", "", "b0", "a1", "a1", "a1"]
