"""A run as Parquet files (zstd), one per table, to a local directory or an ``s3://`` URI.

``s3://`` goes through pyarrow's own S3 filesystem (part of the pyarrow wheel the
sinks extra installs: no further dependency); credentials come from the usual AWS
environment variables or files. The store can also export to S3 by itself:
``INSERT INTO FUNCTION s3(...) SELECT ...`` (docs/ui.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rankstream.export.source import TABLES, ExportError, ExportSummary, RunSource

COMPRESSION = "zstd"


def _filesystem(dest: str) -> tuple[Any, str]:
    """(pyarrow filesystem, base path) for a local directory or a URI pyarrow knows (s3://, file://)."""
    import pyarrow.fs as pafs

    if "://" not in dest:
        path = Path(dest).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return pafs.LocalFileSystem(), str(path)
    try:
        fs, base = pafs.FileSystem.from_uri(dest)
    except (ValueError, OSError) as exc:
        raise ExportError(f"destination {shown(dest)!r}: {str(exc).splitlines()[0]}") from None
    fs.create_dir(base, recursive=True)
    return fs, base.rstrip("/")


def shown(dest: str) -> str:
    """``dest`` for messages: without credentials in the URI or its query (endpoint, keys)."""
    if "://" not in dest:
        return dest
    from urllib.parse import urlsplit

    parts = urlsplit(dest)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}"


def write_parquet(source: RunSource, dest: str) -> ExportSummary:
    """Write every table's rows of the run to ``<dest>/<table>.parquet``."""
    import pyarrow.parquet as pq

    fs, base = _filesystem(dest)
    summary = ExportSummary(dest=shown(dest))
    for table in TABLES:
        path = f"{base}/{table}.parquet"
        writer: Any = None
        rows = 0
        try:
            for batch in source.table(table):
                if writer is None:
                    writer = pq.ParquetWriter(path, batch.schema, compression=COMPRESSION, filesystem=fs)
                writer.write_batch(batch)
                rows += batch.num_rows
            if writer is None:  # no rows of this run: an empty file with the table's columns
                writer = pq.ParquetWriter(path, source.table_schema(table), compression=COMPRESSION, filesystem=fs)
        finally:
            if writer is not None:
                writer.close()
        summary.files.append(path)
        summary.rows[table] = rows
    return summary
