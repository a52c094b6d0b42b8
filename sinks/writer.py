"""Column-oriented, idempotent inserts of a :class:`~rankstream.sinks.records.Batch`.

Column names and types go with every insert, so clickhouse-connect skips its
per-insert DESCRIBE. ``LowCardinality(String)`` columns are sent as plain
``String`` (the Native input format converts them on the server, in C++):
clickhouse-connect would otherwise build each column's dictionary with a
Python loop over every value, the costliest step of an insert.

Idempotence comes from the tables (ReplacingMergeTree on natural keys, read
with FINAL), not from insert-level deduplication: the non-replicated
deduplication log remembers a block id before its rows are committed, so a
retry after a crash between the two would be dropped (migration 0002 turns it
off). Each insert still carries an ``insert_deduplication_token`` from the
batch's Kafka offset ranges, which Replicated tables on a cluster use safely,
and ``async_insert=0``, so an acknowledged insert is a committed part even on
a server whose profile enables asynchronous inserts without waiting for them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from rankstream.sinks.records import Batch
from rankstream.sinks.store import DATABASE
from rankstream.sinks.tables import TABLE_ORDER, column_names, column_types, qualified

RUN_LOOKUP_COLUMNS = column_names("runs")
_LC_STRING = "LowCardinality(String)"


def wire_types(table: str) -> list[str]:
    """The types ``table``'s columns are sent as: the DDL types with ``LowCardinality(String)`` as ``String``."""
    return [type_name.replace(_LC_STRING, "String") for type_name in column_types(table)]


_WIRE_TYPES = {table: wire_types(table) for table in TABLE_ORDER}
_COLUMN_NAMES = {table: column_names(table) for table in TABLE_ORDER}


def prepare_client(client: Any) -> None:
    """Do the client's one-time lazy imports now rather than inside the first batch's insert.

    clickhouse-connect imports pandas and numpy (when installed) the first time
    it inserts, to check whether the data is a DataFrame or an array.
    """
    from clickhouse_connect.driver import options

    getattr(options, "pd", None)
    getattr(options, "np", None)


def batch_token(ranges: Mapping[tuple[str, int], tuple[int, int]]) -> str:
    """A deterministic token for the offset ranges ``(topic, partition) -> (first, last)`` of a batch."""
    text = ";".join(f"{topic}/{part}/{first}-{last}" for (topic, part), (first, last) in sorted(ranges.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def insert_batch(client: Any, batch: Batch, token: str) -> int:
    """Insert every non-empty table of ``batch``; returns the rows written. A retry adds rows that FINAL collapses."""
    written = 0
    for table in TABLE_ORDER:
        n = batch.count(table)
        if not n:
            continue
        client.insert(
            qualified(table),
            batch.columns[table],
            column_names=_COLUMN_NAMES[table],
            column_type_names=_WIRE_TYPES[table],
            column_oriented=True,
            settings={"insert_deduplication_token": f"{token}:{table}", "async_insert": 0},
        )
        written += n
    return written


def lookup_runs(client: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Latest ``runs`` rows for ``run_ids`` (those the store knows), keyed by run_id."""
    if not run_ids:
        return {}
    result = client.query(
        f"SELECT {', '.join(RUN_LOOKUP_COLUMNS)} FROM {DATABASE}.runs FINAL WHERE run_id IN {{ids:Array(String)}}",
        parameters={"ids": run_ids},
    )
    rows: dict[str, dict[str, Any]] = {}
    for values in result.result_rows:
        row = dict(zip(RUN_LOOKUP_COLUMNS, values, strict=True))
        for key in ("started_at", "ended_at", "updated_at"):
            if row[key] is not None:
                row[key] = _to_micros(row[key])
        rows[row["run_id"]] = row
    return rows


def _to_micros(value: Any) -> int:
    """A DateTime64 read back (datetime) as integer microseconds since the epoch."""
    if isinstance(value, int):
        return value
    import datetime as dt

    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
