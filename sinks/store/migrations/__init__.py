"""Versioned, idempotent schema migrations, applied at sink start and by ``rankstream store migrate``.

Migrations are the ``NNNN_name.sql`` files in this package, applied in order;
each applied version is recorded in ``rankstream.schema_migrations``, and each
statement is itself idempotent (``IF NOT EXISTS``), so a run interrupted half
way is simply repeated. Retention (TTL) is configuration, not history: it is
re-applied on every call from ``ttl_days``.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

from rankstream.sinks.store.dsn import DATABASE

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = f"{DATABASE}.schema_migrations"

#: Table -> the time column its retention (TTL) counts from.
TTL_COLUMNS: dict[str, str] = {
    "metrics": "ts",
    "events": "ts",
    "steps": "ts_first",
    "step_metrics": "ts_first",
    "alerts": "ts",
    "runs": "updated_at",
}

_FILE_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[str, str]]:
    """``(version, sql text)`` for every migration shipped with the package, in order."""
    out = []
    for entry in resources.files(__name__).iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            out.append((entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    return sorted(out)


def split_statements(sql: str) -> list[str]:
    """The statements of a migration file (``--`` comment lines dropped, split on ``;``)."""
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]


def applied_versions(client: Any) -> set[str]:
    """Versions already recorded in the store (empty for a fresh store)."""
    client.command(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
    client.command(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (version String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version"
    )
    return {row[0] for row in client.query(f"SELECT version FROM {MIGRATIONS_TABLE} FINAL").result_rows}


def migrate(client: Any, ttl_days: dict[str, int] | None = None) -> list[str]:
    """Apply the pending migrations and the retention settings; return the versions applied now."""
    done = applied_versions(client)
    applied: list[str] = []
    for version, sql in migration_files():
        if version in done:
            continue
        for statement in split_statements(sql):
            client.command(statement)
        client.command(f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES ('{version}')")
        log.info("store: applied migration %s", version)
        applied.append(version)
    for table, days in (ttl_days or {}).items():
        apply_ttl(client, table, days)
    return applied


def apply_ttl(client: Any, table: str, days: int) -> None:
    """Set (days > 0) or remove (days == 0) the retention of one table."""
    if table not in TTL_COLUMNS:
        raise ValueError(f"unknown table {table!r} for TTL (expected one of {', '.join(TTL_COLUMNS)})")
    if not isinstance(days, int) or days < 0:
        raise ValueError(f"TTL for {table!r} must be a non-negative number of days, got {days!r}")
    if days == 0:
        current = client.command(
            f"SELECT count() FROM system.tables WHERE database = '{DATABASE}' AND name = '{table}' "
            "AND position(create_table_query, ' TTL ') > 0"
        )
        if int(current):
            client.command(f"ALTER TABLE {DATABASE}.{table} REMOVE TTL")
        return
    column = TTL_COLUMNS[table]
    client.command(f"ALTER TABLE {DATABASE}.{table} MODIFY TTL toDateTime({column}) + INTERVAL {days} DAY")
