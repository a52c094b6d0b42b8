"""The embedded store through clickhouse-connect's chdb:// DSN: the real ClickHouse engine."""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect


def test_chdb_dsn_create_insert_query(tmp_path: Path) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'store'}")
    client.command("CREATE DATABASE IF NOT EXISTS rt")
    client.command(
        "CREATE TABLE rt.metrics (run_id LowCardinality(String), step UInt32, loss Float64)"
        " ENGINE = MergeTree ORDER BY (run_id, step)"
    )
    rows = [["r1", s, 10.0 / (s + 1)] for s in range(100)]
    client.insert("rt.metrics", rows, column_names=["run_id", "step", "loss"])
    result = client.query("SELECT count(), min(step), max(step), round(sum(loss), 6) FROM rt.metrics")
    expected_sum = round(sum(r[2] for r in rows), 6)
    assert result.result_rows == [(100, 0, 99, expected_sum)]
    assert client.query("SELECT loss FROM rt.metrics WHERE step = 4").result_rows == [(2.0,)]
