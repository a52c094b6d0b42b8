"""The UI's read access to the store: one clickhouse-connect client per server thread.

The client comes from :func:`rankstream.sinks.store.connect_reader`, like ``rankstream sql``:
an embedded store owned by a running sink is read through that sink's HTTP interface
(found via its port file), a ClickHouse server through its DSN with the DSN's user, so the
store's own credentials and row policies (``infra/clickhouse/rbac.sql``) decide what a
viewer of the UI sees. An embedded store opened directly (no sink running) lives in this
process and is shared by all threads under a lock (chDB has one engine per process).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from rankstream.errors import OperationFailed


class QueryFailed(OperationFailed):
    """The store answered a UI query with an error (its own message, one line)."""


class StoreReader:
    """Runs the UI's parameterised queries; safe to call from the server's worker threads."""

    def __init__(self, dsn: str) -> None:
        from rankstream.sinks.store import connect_reader, quiet_client_logs

        quiet_client_logs()
        self.dsn = dsn
        self._local = threading.local()
        self._direct_lock = threading.Lock()
        client, self.how = connect_reader(dsn)  # fails early (StoreError) when the store is unreachable
        self._direct = client if self.how == "direct" else None
        if self._direct is None:
            self._local.client = client

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from rankstream.sinks.store import connect_reader

            client, _how = connect_reader(self.dsn)
            self._local.client = client
        return client

    def rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        """The result rows of one query; a store error becomes :class:`QueryFailed`."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        from rankstream.sinks.store import error_line

        try:
            if self._direct is not None:
                with self._direct_lock:
                    return self._direct.query(sql, parameters=parameters).result_rows
            return self._client().query(sql, parameters=parameters).result_rows
        except ClickHouseError as exc:
            raise QueryFailed(error_line(exc)) from None

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
