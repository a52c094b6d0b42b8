"""Schema, migrations, retention and RBAC SQL against a real engine (chDB served over HTTP)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from rankstream.sinks.records import Batch
from rankstream.sinks.store.migrations import migrate, split_statements
from rankstream.sinks.store.tables import COLUMNS
from rankstream.sinks.store.users import ENV_PASSWORD
from rankstream.sinks.writer import batch_token, insert_batch
from tests.integration.sinks.support import RANKSTREAM, free_port, http_client, start_store, wait_until
from tests.paths import REPO_ROOT

RBAC = REPO_ROOT / "infra" / "clickhouse" / "rbac.sql"
ADMIN_PASSWORD = os.environ[ENV_PASSWORD]  # set by support for every store the tests serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int]]:
    tmp = tmp_path_factory.mktemp("schema")
    port = free_port()
    proc = start_store(tmp / "store", port, tmp / "store.log")
    client = wait_until(lambda: http_client("127.0.0.1", port), "the store server", 60)
    try:
        yield client, port
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_migrations_apply_once(server: tuple[Any, int]) -> None:
    client, _ = server
    assert migrate(client) == [
        "0001_init",
        "0002_no_insert_dedup_log",
        "0003_incarnations_attempts",
        "0004_alert_resolution",
    ]
    assert migrate(client) == []
    versions = client.query("SELECT version FROM rankstream.schema_migrations FINAL ORDER BY version").result_rows
    assert versions == [
        ("0001_init",),
        ("0002_no_insert_dedup_log",),
        ("0003_incarnations_attempts",),
        ("0004_alert_resolution",),
    ]


def test_columns_match_the_insert_types(server: tuple[Any, int]) -> None:
    client, _ = server
    migrate(client)
    for table, columns in COLUMNS.items():
        described = client.query(f"DESCRIBE TABLE rankstream.{table}").result_rows
        assert [(r[0], r[1]) for r in described] == list(columns), table


def test_engines_keys_and_codecs(server: tuple[Any, int]) -> None:
    client, _ = server
    migrate(client)
    rows = dict(
        client.query(
            "SELECT name, sorting_key FROM system.tables WHERE database = 'rankstream' AND name != 'schema_migrations'"
        ).result_rows
    )
    assert rows["metrics"] == "run_id, metric, kind, step, rank, seq, inc"
    assert rows["events"] == "run_id, rank, seq, inc"
    assert rows["steps"] == "run_id, step, attempt"
    assert rows["step_metrics"] == "run_id, metric, step, attempt"
    assert rows["alerts"] == "team, rule, run_id, alert_id, state"
    ddl = client.command("SHOW CREATE TABLE rankstream.metrics")
    assert "Gorilla" in ddl and "PARTITION BY toYYYYMM(ts)" in ddl
    for table in COLUMNS:
        ddl = client.command(f"SHOW CREATE TABLE rankstream.{table}")
        assert "non_replicated_deduplication_window = 0" in ddl, table


def test_a_retried_batch_whose_rows_are_gone_is_stored_again(server: tuple[Any, int]) -> None:
    """The store must not remember an insert longer than its rows.

    A crash between ClickHouse logging a block id and committing its part, or rows
    deleted later, leaves an id without rows; with the deduplication log on, the
    sink's retry of that batch (same token) was dropped and its events were lost.
    Deleting the rows is the deterministic way to leave such an id behind.
    """
    client, _ = server
    migrate(client)
    batch = Batch()
    batch.add_events([_event("retry-gone", seq) for seq in range(5)], ["t"] * 5)
    token = batch_token({("events", 0): (100, 104)})
    where = "WHERE run_id = 'retry-gone'"
    assert insert_batch(client, batch, token) == 10
    client.command(f"ALTER TABLE rankstream.events DELETE {where} SETTINGS mutations_sync = 2")
    assert int(client.command(f"SELECT count() FROM rankstream.events FINAL {where}")) == 0
    insert_batch(client, batch, token)  # the sink's retry: same batch, same token
    assert int(client.command(f"SELECT count() FROM rankstream.events FINAL {where}")) == 5
    insert_batch(client, batch, token)  # a duplicate delivery still collapses in the documented queries
    assert int(client.command(f"SELECT count() FROM rankstream.events FINAL {where}")) == 5
    assert int(client.command(f"SELECT count() FROM rankstream.metrics FINAL {where}")) == 5


def _event(run_id: str, seq: int) -> dict[str, Any]:
    return {
        "run_id": run_id, "rank": 0, "seq": seq, "kind": "step", "step": seq, "ts": 1_750_000_000.0 + seq,
        "host": "h", "local_rank": 0, "world_size": 1, "tags": {}, "metrics": {"loss": 1.0}, "inc": "",
    }  # fmt: skip


def test_ttl_is_configurable_and_removable(server: tuple[Any, int]) -> None:
    client, _ = server
    migrate(client, {"metrics": 30, "alerts": 365})
    assert "toIntervalDay(30)" in client.command("SHOW CREATE TABLE rankstream.metrics")
    assert "toIntervalDay(365)" in client.command("SHOW CREATE TABLE rankstream.alerts")
    migrate(client, {"metrics": 0})
    assert " TTL " not in client.command("SHOW CREATE TABLE rankstream.metrics").replace("\n", " ")
    with pytest.raises(ValueError, match="unknown table"):
        migrate(client, {"nope": 3})


def test_rbac_statements_parse_and_policies_run(server: tuple[Any, int]) -> None:
    client, _ = server
    migrate(client)
    statements = split_statements(RBAC.read_text())
    assert len(statements) > 20
    for stmt in statements:
        formatted = client.command("SELECT formatQuery({q:String})", parameters={"q": stmt})
        assert isinstance(formatted, str) and formatted.split()[0] in ("CREATE", "GRANT", "ALTER"), stmt
    policies = [s for s in statements if s.startswith("CREATE ROW POLICY")]
    assert len(policies) == 18
    for stmt in policies:
        match = re.search(r" ON (\S+) FOR SELECT USING (.+) TO ", stmt)
        assert match, stmt
        client.query(f"SELECT count() FROM {match.group(1)} WHERE {match.group(2)}")
    tables = {re.search(r" ON rankstream\.(\w+) ", s).group(1) for s in policies}
    assert tables == set(COLUMNS)  # every table is covered by the team policies


def test_store_migrate_cli(server: tuple[Any, int]) -> None:
    _, port = server
    ok = subprocess.run(
        [RANKSTREAM, "store", "migrate", "--dsn", f"http://default:{ADMIN_PASSWORD}@127.0.0.1:{port}",
         "--ttl", "events=7"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() in (
        "store schema is up to date",
        "applied: 0001_init, 0002_no_insert_dedup_log, 0003_incarnations_attempts, 0004_alert_resolution",
    )
    bad = subprocess.run(
        [RANKSTREAM, "store", "migrate", "--dsn", "ftp://x"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode == 3 and "unsupported scheme" in bad.stderr and "Traceback" not in bad.stderr
    down = subprocess.run(
        [RANKSTREAM, "store", "migrate", "--dsn", f"http://127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert down.returncode == 3 and "unavailable" in down.stderr and down.stderr.count("\n") == 1
