"""Column names and ClickHouse types of every table the sink writes, as the migrations leave them (0001, 0003).

Inserts pass these up front, so clickhouse-connect never issues a DESCRIBE
per insert; tests/integration/sinks/test_schema.py::test_columns_match_the_insert_types checks them
against the live DDL.
"""

from __future__ import annotations

from typing import Final

from rankstream.sinks.store.dsn import DATABASE

_LC = "LowCardinality(String)"
_TS = "DateTime64(6, 'UTC')"

COLUMNS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    "metrics": (
        ("team", _LC),
        ("run_id", "String"),
        ("metric", _LC),
        ("kind", _LC),
        ("step", "Int64"),
        ("rank", "UInt32"),
        ("seq", "UInt64"),
        ("inc", _LC),
        ("ts", _TS),
        ("value", "Float64"),
        ("host", _LC),
        ("world_size", "UInt32"),
    ),
    "events": (
        ("team", _LC),
        ("run_id", "String"),
        ("rank", "UInt32"),
        ("seq", "UInt64"),
        ("inc", _LC),
        ("kind", _LC),
        ("step", "Int64"),
        ("ts", _TS),
        ("host", _LC),
        ("local_rank", "UInt32"),
        ("world_size", "UInt32"),
        ("n_metrics", "UInt16"),
        ("tags", f"Map({_LC}, String)"),
    ),
    "steps": (
        ("team", _LC),
        ("run_id", "String"),
        ("step", "Int64"),
        ("attempt", "UInt32"),
        ("world_size", "UInt32"),
        ("ranks_reported", "UInt32"),
        ("missing_ranks", "Array(UInt32)"),
        ("complete", "Bool"),
        ("ts_first", _TS),
        ("ts_last", _TS),
        ("extra", "String"),
    ),
    "step_metrics": (
        ("team", _LC),
        ("run_id", "String"),
        ("metric", _LC),
        ("step", "Int64"),
        ("attempt", "UInt32"),
        ("ts_first", _TS),
        ("mean", "Float64"),
        ("min", "Float64"),
        ("max", "Float64"),
        ("std", "Float64"),
        ("argmin", "Int32"),
        ("argmax", "Int32"),
        ("n", "UInt32"),
    ),
    "alerts": (
        ("team", _LC),
        ("rule", _LC),
        ("severity", _LC),
        ("run_id", "String"),
        ("alert_id", "String"),
        ("step", "Int64"),
        ("ranks", "Array(UInt32)"),
        ("ts", _TS),
        ("message", "String"),
        ("evidence", "String"),
        ("state", _LC),
        ("resolved_step", "Int64"),
    ),
    "runs": (
        ("run_id", "String"),
        ("team", _LC),
        ("run_name", "String"),
        ("project", _LC),
        ("task_type", _LC),
        ("model_name", _LC),
        ("model_architecture", _LC),
        ("config", "String"),
        ("world_size", "UInt32"),
        ("status", _LC),
        ("started_at", _TS),
        ("ended_at", f"Nullable({_TS})"),
        ("updated_at", _TS),
    ),
}

#: Insert order: the runs table first, so a reader that sees a run's metrics also sees its team.
TABLE_ORDER: Final = ("runs", "events", "metrics", "steps", "step_metrics", "alerts")


def qualified(table: str) -> str:
    return f"{DATABASE}.{table}"


def column_names(table: str) -> list[str]:
    return [name for name, _ in COLUMNS[table]]


def column_types(table: str) -> list[str]:
    return [type_name for _, type_name in COLUMNS[table]]
