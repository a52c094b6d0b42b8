"""Export one run from the store: TensorBoard event files or Parquet files (an archive for object storage).

Both read the store through SQL only (any client of :func:`rankstream.sinks.store.connect_reader`),
so an export works against a running sink's embedded store, a ClickHouse server, or a stopped store.

* :mod:`.source`: the queries (latest attempt of each step, each rank's latest value of a step);
* :mod:`.tensorboard`: event files TensorBoard reads (aggregates, and one TensorBoard run per rank);
* :mod:`.parquet`: one zstd Parquet file per table, to a directory or ``s3://`` (pyarrow's own filesystems).
"""

from __future__ import annotations

from rankstream.export.source import ExportError, ExportSummary, RunSource

FORMATS = ("tensorboard", "parquet")

__all__ = ["FORMATS", "ExportError", "ExportSummary", "RunSource", "export_run"]


def export_run(
    client: object, run_id: str, fmt: str, dest: str, *, metrics: list[str] | None = None, ranks: bool = True
) -> ExportSummary:
    """Write run ``run_id`` to ``dest`` in ``fmt`` (one of :data:`FORMATS`); what was written."""
    source = RunSource(client, run_id, metrics=metrics)
    source.require_run()
    if fmt == "tensorboard":
        from rankstream.export.tensorboard import write_tensorboard

        return write_tensorboard(source, dest, ranks=ranks)
    if fmt == "parquet":
        from rankstream.export.parquet import write_parquet

        return write_parquet(source, dest)
    raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
