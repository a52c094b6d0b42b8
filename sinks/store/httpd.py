"""ClickHouse's HTTP interface (the subset clients use) over an embedded chDB store, on 127.0.0.1.

chDB allows one process per data directory, so the process that owns the
store (the sink) serves it: ``rankstream sql``, an unmodified
``clickhouse_connect.get_client(host=..., port=...)`` and dashboards query it
while the sink writes. Supported: ``GET /ping``, ``GET|POST /`` with the SQL in
the ``query`` parameter and/or the body (form-encoded too), ``database``,
``default_format``, ``param_*`` bind parameters, settings as URL parameters,
FORMAT clauses (Native, RowBinaryWithNamesAndTypes, JSON ... whatever chDB
can write), inserts with data in the body (plain, chunked, gzip/deflate/lz4/zstd),
and ClickHouse's error headers. Runnable alone as
``python -m rankstream.sinks.store.httpd --path DIR --port N`` (used by tests as a
stand-in ClickHouse server that can be stopped). Request parsing and error
shapes live in :mod:`.http_request`; :func:`serve_store` is how the owning
process (``rankstream sink``) serves its store and tells readers the port.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import signal
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

from rankstream.sinks.store import portfile
from rankstream.sinks.store.http_request import (
    QueryError,
    Request,
    decompress,
    error_from_engine,
    form_fields,
    http_status,
    read_body,
)

log = logging.getLogger("rankstream.sink.http")

HOST = "127.0.0.1"

_BINARY_FORMATS = frozenset(
    {"Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "Parquet", "Arrow"}
)


class _Conn:
    """One chDB handle with the engine settings currently applied to it (SET is per handle)."""

    def __init__(self, path: str) -> None:
        import chdb

        self.conn = chdb.connect(path)
        self.applied: dict[str, str] = {}
        self.database: str | None = None

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


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class _Pool:
    """A few reusable chDB handles, so concurrent requests do not share session state."""

    def __init__(self, path: str, size: int = 4) -> None:
        self.path = path
        self._free: queue.LifoQueue[_Conn] = queue.LifoQueue()
        self._sem = threading.BoundedSemaphore(size)

    @contextlib.contextmanager
    def get(self) -> Any:
        with self._sem:
            try:
                conn = self._free.get_nowait()
            except queue.Empty:
                conn = _Conn(self.path)
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


class StoreHttpServer:
    """Serves the store at ``path`` on 127.0.0.1:``port`` (0: any free port) from a background thread."""

    def __init__(self, path: str | Path, port: int = 8123) -> None:
        self.path = os.path.realpath(str(path))
        self.requested_port = port
        self.port = 0
        self._pool = _Pool(self.path)
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
            server = ThreadingHTTPServer((HOST, self.requested_port), handler)
        except OSError as exc:
            if self.requested_port == 0:
                raise
            log.warning("http: port %d unavailable (%s); using a free port instead", self.requested_port, exc)
            server = ThreadingHTTPServer((HOST, 0), handler)
        server.daemon_threads = True
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

    def execute(self, req: Request) -> tuple[bytes, str | None, dict[str, Any]]:
        """Run one request; returns (body, result format or None, summary)."""
        fmt = req.output_format()
        with self._pool.get() as conn:
            conn.prepare(req.database, req.settings)
            if req.data is not None:
                return b"", None, self._insert(conn, req)
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
def serve_store(path: Path, port: int) -> Iterator[int]:
    """Serve the embedded store at ``path`` while the block runs; yields the port (``port``, or a free one).

    chDB opens a data directory in one process only, so the process that owns
    the store serves it to every other reader; the port file tells them where
    (written once the server accepts connections, removed before it stops).
    """
    server = StoreHttpServer(path, port)
    bound = server.start()
    try:
        portfile.write(Path(server.path), HOST, bound)
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
            try:
                body = decompress(body, self.headers.get("Content-Encoding", ""))
                if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                    params.update(form_fields(content_type, body))
                    body = b""
                req = Request(params, body)
                result, fmt, summary = server.execute(req)
            except QueryError as exc:
                message = str(exc) if str(exc).startswith("Code:") else f"Code: {exc.code}. DB::Exception: {exc}"
                self._send(
                    http_status(exc.code),
                    (message.rstrip() + "\n").encode(),
                    {
                        "Content-Type": "text/plain; charset=UTF-8",
                        "X-ClickHouse-Exception-Code": str(exc.code),
                        "X-ClickHouse-Server-Display-Name": "rankstream",
                    },
                )
                return
            except Exception as exc:  # a bug or an engine failure: still one ClickHouse-shaped error
                log.warning("http: request failed: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._send(
                    500,
                    f"Code: 1002. DB::Exception: {exc}\n".encode(),
                    {"Content-Type": "text/plain; charset=UTF-8", "X-ClickHouse-Exception-Code": "1002"},
                )
                return
            headers = {
                "Content-Type": "application/octet-stream" if fmt in _BINARY_FORMATS else "text/plain; charset=UTF-8",
                "X-ClickHouse-Query-Id": req.query_id,
                "X-ClickHouse-Timezone": server._timezone,
                "X-ClickHouse-Server-Display-Name": "rankstream",
                "X-ClickHouse-Summary": json.dumps(summary),
            }
            if fmt:
                headers["X-ClickHouse-Format"] = fmt
            self._send(200, result, headers)

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Serve a chDB directory alone (a stand-in ClickHouse server for tests and local tools)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    Path(args.path).mkdir(parents=True, exist_ok=True)
    server = StoreHttpServer(args.path, args.port)
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
