"""What an export reads from the store, as Arrow record batches streamed from SQL.

Every query is bound server-side (``{run_id:String}``) and read as an Arrow stream, so
a long run is written batch by batch instead of being held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rankstream.errors import InvalidInput

#: The tables of a run, with the order that keeps each file sorted like the table's key.
TABLES: dict[str, str] = {
    "runs": "run_id",
    "events": "rank, inc, seq",
    "metrics": "metric, kind, step, rank, seq, inc",
    "steps": "step, attempt",
    "step_metrics": "metric, step, attempt",
    "alerts": "ts, alert_id, state",
}

# The latest attempt of each aligned step (a resumed run aligns repeated steps again).
AGGREGATES_SQL = """
SELECT metric, step,
       argMax(mean, attempt) AS mean, argMax(min, attempt) AS min, argMax(max, attempt) AS max,
       toUnixTimestamp64Micro(argMax(ts_first, attempt)) / 1e6 AS wall_time
FROM rankstream.step_metrics FINAL
WHERE run_id = {run_id:String} AND ({all_metrics:Bool} OR has({metrics:Array(String)}, metric))
GROUP BY metric, step
ORDER BY metric, step
"""

# Each rank's latest value of a step (argMax by time: a resumed launch reports repeated steps again).
RANK_SERIES_SQL = """
SELECT rank, metric, step, argMax(value, ts) AS value, toUnixTimestamp64Micro(max(ts)) / 1e6 AS wall_time
FROM rankstream.metrics FINAL
WHERE run_id = {run_id:String} AND kind = 'step' AND ({all_metrics:Bool} OR has({metrics:Array(String)}, metric))
GROUP BY rank, metric, step
ORDER BY rank, metric, step
"""

EXISTS_SQL = """
SELECT (SELECT count() FROM rankstream.runs WHERE run_id = {run_id:String})
     + (SELECT count() FROM rankstream.events WHERE run_id = {run_id:String})
"""


class ExportError(InvalidInput):
    """An export that cannot be done as asked (unknown run, bad destination, missing optional package)."""


@dataclass
class ExportSummary:
    """What an export wrote: files and rows per kind of content."""

    dest: str
    files: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        counts = ", ".join(f"{name} {n}" for name, n in self.rows.items())
        return f"wrote {len(self.files)} file{'s' if len(self.files) != 1 else ''} to {self.dest} ({counts})"


class RunSource:
    """One run of the store, read through a clickhouse-connect client (HTTP or embedded)."""

    def __init__(self, client: Any, run_id: str, *, metrics: list[str] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.metrics = sorted(set(metrics or []))

    def _params(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "all_metrics": not self.metrics, "metrics": self.metrics}

    def require_run(self) -> None:
        """Raise :class:`ExportError` when the store has nothing of this run."""
        found = int(self.client.command(EXISTS_SQL, parameters={"run_id": self.run_id}))
        if not found:
            raise ExportError(f"no run {self.run_id!r} in the store")

    def aggregates(self) -> Iterator[Any]:
        """Record batches of (metric, step, mean, min, max, wall_time), the latest attempt of each step."""
        return self._stream(AGGREGATES_SQL, self._params())

    def rank_series(self) -> Iterator[Any]:
        """Record batches of (rank, metric, step, value, wall_time): each rank's latest value of each step."""
        return self._stream(RANK_SERIES_SQL, self._params())

    def table(self, name: str) -> Iterator[Any]:
        """Record batches of every row of this run in table ``name`` (every attempt and incarnation)."""
        order = TABLES[name]
        sql = f"SELECT * FROM rankstream.{name} FINAL WHERE run_id = {{run_id:String}} ORDER BY {order}"
        return self._stream(sql, {"run_id": self.run_id})

    def table_schema(self, name: str) -> Any:
        """The Arrow schema of ``name`` (for a table without rows of this run)."""
        sql = f"SELECT * FROM rankstream.{name} WHERE run_id = {{run_id:String}} LIMIT 0"
        return self.client.query_arrow(sql, parameters={"run_id": self.run_id}).schema

    def _stream(self, sql: str, parameters: dict[str, Any]) -> Iterator[Any]:
        with self.client.query_arrow_stream(sql, parameters=parameters) as stream:
            for batch in stream:
                if batch.num_rows:
                    yield batch
