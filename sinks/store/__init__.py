"""The store: how every part of rankstream reaches ClickHouse or the embedded chDB, and its schema.

Both the sink (the write side) and the ``sql``, ``runs`` and ``store`` commands
use this package, so they accept the same DSNs and fail with the same reasons.

* :mod:`.dsn`: :func:`parse_dsn`, :func:`open_store`, :class:`StoreError`, :data:`DATABASE`;
* :mod:`.query`: :func:`connect_reader` (through the owning sink when it runs), :func:`statement_kind`,
  :func:`error_line`;
* :mod:`.portfile`: where the process that owns an embedded store says which port serves it;
* :mod:`.httpd`: ClickHouse's HTTP interface over chDB (:func:`~.httpd.serve_store`), with request
  parsing in :mod:`.http_request`;
* :mod:`.migrations` (versioned DDL) and :mod:`.tables` (the columns the sink writes).

chDB opens a data directory in one process only: the sink owns an embedded
store and serves it over HTTP; other readers find it through the port file.
Importing this package loads no store client (each function imports it when called).
"""

from __future__ import annotations

from rankstream.sinks.store.dsn import DATABASE, Dsn, StoreError, open_store, parse_dsn, quiet_client_logs
from rankstream.sinks.store.query import connect_reader, error_line, statement_kind

__all__ = [
    "DATABASE",
    "Dsn",
    "StoreError",
    "connect_reader",
    "error_line",
    "open_store",
    "parse_dsn",
    "quiet_client_logs",
    "statement_kind",
]
