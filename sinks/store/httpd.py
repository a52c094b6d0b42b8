"""ClickHouse's HTTP interface (the subset clients use) over an embedded chDB store, on 127.0.0.1.

chDB allows one process per data directory, so the process that owns the
store (the sink) serves it: ``rankstream sql``, an unmodified
``clickhouse_connect.get_client(host=..., port=...)`` and dashboards query it
while the sink writes. Supported: ``GET /ping``, ``GET|POST /`` with the SQL in
the ``query`` parameter and/or the body (multipart fields too), ``database``,
``default_format``, ``param_*`` bind parameters, settings as URL parameters, ``readonly``,
FORMAT clauses (Native, RowBinaryWithNamesAndTypes, JSON ... whatever chDB
can write), inserts with data in the body (plain, chunked, gzip/deflate/lz4/zstd),
and ClickHouse's error headers. Runnable alone as
``python -m rankstream.sinks.store.httpd --path DIR --port N`` (used by tests as a
stand-in ClickHouse server that can be stopped). Request parsing and error
shapes live in :mod:`.http_request`; :func:`serve_store` is how the owning
process (``rankstream sink``, ``rankstream store serve``) serves its store and tells readers the port.

Access (docs/access.md): every request but ``/ping`` authenticates (:mod:`.auth`,
users in a 0600 file next to the store, :mod:`.users`); GET, ``readonly=1|2`` and
team users are read-only, and :mod:`.policy` decides what a statement may touch.
A body is the query whatever its content type (only multipart bodies carry
fields), and ``X-ClickHouse-User/Key/Format/Database`` headers work as in ClickHouse.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import ssl
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

from rankstream.sinks.store import policy, portfile
from rankstream.sinks.store.auth import Authenticator, credentials
from rankstream.sinks.store.dsn import DATABASE
from rankstream.sinks.store.http_request import (
    QueryError,
    Request,
    decompress,
    error_from_engine,
    form_fields,
    http_status,
    native_compress,
    read_body,
)
from rankstream.sinks.store.users import Principal

log = logging.getLogger("rankstream.sink.http")

HOST = "127.0.0.1"

_BINARY_FORMATS = frozenset(
    {"Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "Parquet", "Arrow"}
)


class _Conn:
    """One chDB handle with the engine settings currently applied to it (SET is per handle)."""

    def __init__(self, path: str, readonly: bool = False) -> None:
        import chdb

        self.conn = chdb.connect(path)
        self.applied: dict[str, str] = {}
        self.database: str | None = None
        if readonly:  # the engine refuses writes on this handle too; it cannot be lifted again
            self._run("SET readonly = 2")

    def prepare(self, database: str | None, settings: dict[str, str]) -> None:
        """Make this handle's database and settings equal to the request's (only the differences are sent)."""
        db = database or "default"
        if db != self.database:
            self._run(f"USE `{db.replace('`', '')}`")
            self.database = db
        for key in [k for k in self.applied if k not in settings]:
            self._run(f"SET {key} = DEFAULT")
            del self.applied[key]
        for key, value in settings.items():
            if self.applied.get(key) != value:
                self._run(f"SET {key} = '{_quote(value)}'")
                self.applied[key] = value

    def _run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return self.conn.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise error_from_engine(exc) from None

    def _text(self, sql: str, params: dict[str, str] | None = None) -> str:
        return bytes(self._run(sql, "TabSeparatedRaw", params).bytes() or b"").decode("utf-8", "replace")

    def _format_query(self, sql: str) -> str:
        """The statement as the engine's formatter prints it; one statement only (a syntax error otherwise)."""
        try:
            return self._text("SELECT formatQuerySingleLine({q:String})", {"q": _tsv_escape(sql)}).strip()
        except QueryError as exc:  # the engine's own message, without the wrapper query
            raise QueryError(str(exc).split(". : In scope SELECT formatQuerySingleLine(")[0] + ".", exc.code) from None

    def inspector(self, params: dict[str, str] | None = None) -> policy.Inspect:
        """How :func:`policy.check` reads a statement on this handle: the engine's own parser.

        ``params``: the request's bind parameters (``{name:Type}`` in the query must be set to explain it)."""
        return policy.Inspect(
            format_query=self._format_query,
            explain_ast=lambda sql: self._text(f"EXPLAIN AST {sql}", params),
            databases=lambda: set(self._text("SELECT name FROM system.databases").split()),
        )


def _tsv_escape(value: str) -> str:
    """A query parameter's value as the engine reads it (escaped like a TabSeparated field)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class _Pool:
    """A few reusable chDB handles, so concurrent requests do not share session state."""

    def __init__(self, path: str, size: int = 4, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._free: queue.LifoQueue[_Conn] = queue.LifoQueue()
        self._sem = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def get(self) -> Any:
        with self._sem:
            try:
                conn = self._free.get_nowait()
            except queue.Empty:
                conn = _Conn(self.path, self.readonly)
            try:
                yield conn
            except Exception:
                self._free.put(conn)
                raise
            else:
                self._free.put(conn)

    def close(self) -> None:
        while True:
            try:
                conn = self._free.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                conn.conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (the JDBC driver closes kept-alive connections) is not worth a traceback."""
        log.debug("http: connection from %s ended with an error", client_address, exc_info=True)


class StoreHttpServer:
    """Serves the store at ``path`` on 127.0.0.1:``port`` (0: any free port) from a background thread.

    ``tls``: ``(certificate file, key file)`` to serve HTTPS instead of HTTP.
    """

    def __init__(self, path: str | Path, port: int = 8123, tls: tuple[str, str] | None = None) -> None:
        self.path = os.path.realpath(str(path))
        self.requested_port = port
        self.port = 0
        self.tls = tls
        self.auth = Authenticator(Path(self.path))
        self._pool = _Pool(self.path)
        self._readonly_pool = _Pool(self.path, readonly=True)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timezone = "UTC"
        self._version = ""

    def start(self) -> int:
        """Bind (falling back to a free port when ``port`` is taken) and serve; returns the port once ready."""
        with self._pool.get() as conn:
            row = conn._run("SELECT version(), timezone()").bytes().decode().strip().split("\t")
            self._version, self._timezone = row[0], row[1] if len(row) > 1 else "UTC"
        handler = _make_handler(self)
        try:
            server = _Server((HOST, self.requested_port), handler)
        except OSError as exc:
            if self.requested_port == 0:
                raise
            log.warning("http: port %d unavailable (%s); using a free port instead", self.requested_port, exc)
            server = _Server((HOST, 0), handler)
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="rankstream-http", daemon=True)
        self._thread.start()
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._pool.close()
        self._readonly_pool.close()

    def execute(self, req: Request, who: Principal, readonly: bool = False) -> tuple[bytes, str | None, dict[str, Any]]:
        """Run one request for ``who``; returns (body, result format or None, summary).

        ``readonly``: a GET request; ``readonly=1|2`` in the request and team users are read-only too.
        """
        readonly = readonly or req.readonly or not who.admin
        fmt = req.output_format()
        settings, database = dict(req.settings), req.database
        policy.check_settings(who, settings)
        if who.team is not None:
            settings["additional_table_filters"] = policy.team_filters(who.team)
            database = DATABASE
        with (self._readonly_pool if readonly else self._pool).get() as conn:
            conn.prepare(database, settings)
            if req.data is not None:
                if readonly:
                    raise policy.readonly_error(who)
                return b"", None, self._insert(conn, req)
            policy.check(who, readonly, req.sql, conn.inspector(req.bind))
            result = conn._run(req.sql, fmt or "TabSeparated", req.bind)
            body = result.bytes() or b""
            summary = _summary(result)
            return body, fmt, summary

    def _insert(self, conn: _Conn, req: Request) -> dict[str, Any]:
        assert req.data is not None
        fd, name = tempfile.mkstemp(suffix=".insert")
        try:
            with os.fdopen(fd, "wb") as tmp:
                tmp.write(req.data)
            clause = f" SETTINGS {req.insert_settings}" if req.insert_settings else ""
            sql = f"{req.sql} FROM INFILE '{_quote(name)}'{clause} FORMAT {req.insert_format}"
            result = conn._run(sql, "TabSeparated", req.bind)
            summary = _summary(result)
            summary["written_rows"] = summary.pop("read_rows", "0")
            return summary
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)


def _summary(result: Any) -> dict[str, Any]:
    try:
        return {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read())}
    except Exception:
        return {}


@contextlib.contextmanager
def serve_store(path: Path, port: int, tls: tuple[str, str] | None = None) -> Iterator[int]:
    """Serve the embedded store at ``path`` while the block runs; yields the port (``port``, or a free one).

    chDB opens a data directory in one process only, so the process that owns
    the store serves it to every other reader; the port file tells them where
    (written once the server accepts connections, removed before it stops).
    """
    server = StoreHttpServer(path, port, tls)
    bound = server.start()
    try:
        portfile.write(Path(server.path), HOST, bound, tls=tls is not None)
        yield bound
    finally:
        portfile.remove(Path(server.path))
        server.stop()


def _make_handler(server: StoreHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "rankstream-chdb"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            url = urlparse(self.path)
            route = url.path.rstrip("/")
            try:
                body = read_body(self)
            except (QueryError, ValueError) as exc:
                self.close_connection = True
                self._send(400, f"{exc}\n".encode(), {"Content-Type": "text/plain; charset=UTF-8"})
                return
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            if route in ("/ping", "/replicas_status") or (route == "" and not params.get("query") and not body):
                self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
                return
            if route != "":
                self._send(404, b"There is no handle " + route.encode() + b"\n", {"Content-Type": "text/plain"})
                return
            content_type = self.headers.get("Content-Type", "")
            headers = {key.lower(): value for key, value in self.headers.items()}
            try:
                body = decompress(body, self.headers.get("Content-Encoding", ""))
                if content_type.startswith("multipart/form-data"):
                    params.update(form_fields(content_type, body))
                    body = b""
                who = server.auth.authenticate(*credentials(headers, params))
                req = Request(params, body, headers)
                result, fmt, summary = server.execute(req, who, readonly=self.command == "GET")
            except QueryError as exc:
                message = str(exc) if str(exc).startswith("Code:") else f"Code: {exc.code}. DB::Exception: {exc}"
                error_headers = {
                    "Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(exc.code),
                    "X-ClickHouse-Server-Display-Name": "rankstream",
                }
                if http_status(exc.code) == 401:
                    error_headers["WWW-Authenticate"] = 'Basic realm="rankstream", charset="UTF-8"'
                self._send(http_status(exc.code), (message.rstrip() + "\n").encode(), error_headers)
                return
            except Exception as exc:  # a bug or an engine failure: still one ClickHouse-shaped error
                log.warning("http: request failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._send(
                    500,
                    f"Code: 1002. DB::Exception: {exc}\n".encode(),
                    {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": "1002"},
                )
                return
            response_headers = {
                "Content-Type": "application/octet-stream" if fmt in _BINARY_FORMATS else "text/plain; charset=UTF-8",
                "X-ClickHouse-Query-Id": req.query_id,
                "X-ClickHouse-Timezone": server._timezone,
                "X-ClickHouse-Server-Display-Name": "rankstream",
                "X-ClickHouse-Summary": json.dumps(summary),
            }
            if fmt:
                response_headers["X-ClickHouse-Format"] = fmt
            if params.get("compress") == "1":
                result = native_compress(result)
            self._send(200, result, response_headers)

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve a chDB directory alone (a stand-in ClickHouse server for tests and local tools)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default="")
    parser.add_argument("--tls-cert", default="")
    parser.add_argument("--tls-key", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Path(args.path).mkdir(parents=True, exist_ok=True)
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    server = StoreHttpServer(args.path, args.port, tls)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    port = server.start()
    if args.port_file:
        tmp = Path(args.port_file + ".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": HOST, "port": port}))
        tmp.replace(args.port_file)
    log.info("http: serving %s on %s:%d", args.path, HOST, port)
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
