"""The UI's read access to the store: one clickhouse-connect client per server thread (and viewer).

The client comes from :func:`rankstream.sinks.store.connect_reader`, like ``rankstream sql``:
an embedded store owned by a running sink is read through that sink's HTTP interface
(found via its port file), a ClickHouse server through its DSN with the DSN's user. An
embedded store opened directly (no sink running) lives in this process and is shared by all
threads under a lock (chDB has one engine per process).

With ``login`` the UI holds no store rights of its own: every request carries a viewer's
store user and password (HTTP Basic), and the queries run as that user, so the store's own
credentials and team filters (``rankstream store user add TEAM``, ``infra/clickhouse/rbac.sql``)
decide what each viewer sees. That needs a store server (a running sink, ``rankstream store
serve``, or ClickHouse).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rankstream.errors import ConfigError, OperationFailed

#: ClickHouse error codes of a refused user (wrong password, unknown user, no grant to log in).
_AUTH_CODES = {"516", "192", "194", "195"}


class QueryFailed(OperationFailed):
    """The store answered a UI query with an error (its own message, one line)."""


class NotAuthenticated(QueryFailed):
    """The store refused the viewer's user or password."""


class RowSource(Protocol):
    """What the UI's queries read through (a reader bound to one request's viewer)."""

    def rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]: ...


@dataclass(frozen=True)
class Viewer:
    """The store user a request runs as (``login`` mode)."""

    user: str
    password: str

    def key(self) -> tuple[str, str]:
        return self.user, hashlib.sha256(self.password.encode()).hexdigest()


class StoreReader:
    """Runs the UI's parameterised queries; safe to call from the server's worker threads."""

    def __init__(self, dsn: str, *, login: bool = False) -> None:
        from rankstream.sinks.store import connect_reader, parse_dsn, portfile, quiet_client_logs

        quiet_client_logs()
        self.dsn = dsn
        self.login = login
        self._local = threading.local()
        self._direct_lock = threading.Lock()
        parsed = parse_dsn(dsn)
        self._server: tuple[str, int] | None = None
        if login and parsed.embedded:
            assert parsed.path is not None
            self._server = portfile.find_server(parsed.path)
            if self._server is None:
                raise ConfigError(
                    f"--login needs a store server: no sink or `rankstream store serve` serves {parsed.path}"
                )
            self._tls = portfile.uses_tls(parsed.path)
        if login:
            self.how = "http, as each viewer's store user"
            self._direct = None
            return
        client, self.how = connect_reader(dsn)  # fails early (StoreError) when the store is unreachable
        self._direct = client if self.how == "direct" else None
        if self._direct is None:
            self._local.client = client

    def _client(self, viewer: Viewer | None) -> Any:
        if viewer is None:
            client = getattr(self._local, "client", None)
            if client is None:
                from rankstream.sinks.store import connect_reader

                client, _how = connect_reader(self.dsn)
                self._local.client = client
            return client
        cache: dict[tuple[str, str], Any] = self._local.__dict__.setdefault("viewers", {})
        key = viewer.key()
        if key not in cache:
            if len(cache) >= 32:
                cache.pop(next(iter(cache))).close()
            cache[key] = self._viewer_client(viewer)
        return cache[key]

    def _viewer_client(self, viewer: Viewer) -> Any:
        import clickhouse_connect

        try:
            if self._server is not None:
                return clickhouse_connect.get_client(
                    host=self._server[0],
                    port=self._server[1],
                    username=viewer.user,
                    password=viewer.password,
                    compress=False,
                    secure=self._tls,
                    verify=not self._tls,
                )
            return clickhouse_connect.get_client(
                dsn=self.dsn, username=viewer.user, password=viewer.password, connect_timeout=5
            )
        except Exception as exc:
            raise self._failure(exc) from None

    def rows(self, sql: str, parameters: dict[str, Any], viewer: Viewer | None = None) -> Sequence[Sequence[Any]]:
        """The result rows of one query; a store error becomes :class:`QueryFailed`."""
        from clickhouse_connect.driver.exceptions import ClickHouseError

        if self.login and viewer is None:
            raise NotAuthenticated("sign in with your store user")
        try:
            if self._direct is not None:
                with self._direct_lock:
                    return self._direct.query(sql, parameters=parameters).result_rows
            # bound by the server (``param_*``), for viewers too: ClickHouse and the embedded interface take
            # query parameters from read-only users, so no value is ever spliced into the SQL text
            return self._client(viewer).query(sql, parameters=parameters).result_rows
        except ClickHouseError as exc:
            raise self._failure(exc) from None

    def as_viewer(self, viewer: Viewer | None) -> ViewerReader:
        return ViewerReader(self, viewer)

    @staticmethod
    def _failure(exc: BaseException) -> QueryFailed:
        from rankstream.sinks.store import error_line

        text = error_line(exc)
        code = text[6:].split(".", 1)[0] if text.startswith("Code: ") else ""
        refused = code in _AUTH_CODES or "HTTP 401" in str(exc) or "AUTHENTICATION_FAILED" in text
        return NotAuthenticated(text) if refused else QueryFailed(text)

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()


class ViewerReader:
    """A :class:`StoreReader` bound to one request's viewer (what :mod:`.api` reads through)."""

    def __init__(self, reader: StoreReader, viewer: Viewer | None) -> None:
        self.reader = reader
        self.viewer = viewer

    def rows(self, sql: str, parameters: dict[str, Any]) -> Sequence[Sequence[Any]]:
        return self.reader.rows(sql, parameters, self.viewer)
