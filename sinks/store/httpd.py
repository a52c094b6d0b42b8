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
``python -m rankstream.sinks.httpd --path DIR --port N`` (used by tests as a
stand-in ClickHouse server that can be stopped).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import queue
import re
import signal
import tempfile
import threading
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlparse

log = logging.getLogger("rankstream.sink.http")

HOST = "127.0.0.1"
MAX_BODY_BYTES = 1 << 30

# URL parameters that steer the HTTP layer, never passed to the engine as settings.
_TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "quota_key",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "role",
        "readonly",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "enable_http_compression",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
    }
)
_SETTING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE | re.DOTALL)
_INSERT_DATA_RE = re.compile(
    r"^\s*(INSERT\s+INTO\s+.+?)\s+(?:SETTINGS\s+(.+?)\s+)?FORMAT\s+(\w+)[ \t]*(?:\r?\n(.*))?$",
    re.IGNORECASE | re.DOTALL,
)
_RESULT_RE = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN|CHECK)\b", re.IGNORECASE)
_CODE_RE = re.compile(r"Code:\s*(\d+)")
_BINARY_FORMATS = frozenset(
    {"Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "Parquet", "Arrow"}
)


class QueryError(Exception):
    """A failed query, carrying ClickHouse's error code and message."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


def _error_from_engine(exc: Exception) -> QueryError:
    text = str(exc).strip()
    idx = text.find("Code: ")
    if idx > 0:
        text = text[idx:]
    match = _CODE_RE.search(text)
    return QueryError(text or type(exc).__name__, int(match.group(1)) if match else 1002)


def _http_status(code: int) -> int:
    if code in (62, 27, 36, 38, 46, 47, 53, 117, 344, 377):  # syntax / bad arguments / unknown identifiers
        return 400
    if code in (60, 81):  # unknown table / database
        return 404
    if code in (192, 193, 194, 195, 516):  # auth
        return 403
    return 500


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
            raise _error_from_engine(exc) from None


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


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return data
    from clickhouse_connect.driver._backend.httpcommon import decompress_response

    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    return decompress_response(data, encoding)


class Request:
    """A parsed HTTP request: the SQL, data for inserts, database, output format, settings and bind params."""

    def __init__(self, params: dict[str, str], body: bytes) -> None:
        self.database = params.get("database") or None
        self.default_format = params.get("default_format") or "TabSeparated"
        self.query_id = params.get("query_id") or str(uuid.uuid4())
        self.bind = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        self.settings = {k: v for k, v in params.items() if k not in _TRANSPORT_PARAMS and not k.startswith("param_")}
        for key in self.settings:
            if not _SETTING_RE.match(key):
                raise QueryError(f"Code: 115. DB::Exception: Unknown setting '{key[:80]}'", 115)
        self.data: bytes | None = None
        query = params.get("query", "")
        if query and body:
            match = _INSERT_DATA_RE.match(query)
            if match and not (match.group(4) or "").strip():
                self.sql, self.insert_settings, self.insert_format = match.group(1), match.group(2), match.group(3)
                self.data = body
                return
            query = f"{query}\n{body.decode('utf-8', 'replace')}"
        elif body:
            # The statement may be followed by binary data (clickhouse-connect's Native inserts): split on bytes.
            head, sep, rest = body.partition(b"\n")
            match = _INSERT_DATA_RE.match(head.decode("utf-8", "replace"))
            if sep and match and match.group(3).lower() != "values" and not match.group(4):
                self.sql, self.insert_settings, self.insert_format = match.group(1), match.group(2), match.group(3)
                self.data = rest
                return
            query = body.decode("utf-8", "replace")
        if not query.strip():
            raise QueryError("Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 62)
        self.sql = query

    def output_format(self) -> str | None:
        """The result format, or None for statements without a result set."""
        if self.data is not None:
            return None
        match = _TRAILING_FORMAT_RE.search(self.sql)
        if match:
            return match.group(1)
        return self.default_format if _RESULT_RE.match(self.sql) else None


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


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        total = 0
        while True:
            size_line = handler.rfile.readline(1024)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                break
            total += size
            if total > MAX_BODY_BYTES:
                raise QueryError("request body too large", 1002)
            parts.append(handler.rfile.read(size))
            handler.rfile.readline(8)
        return b"".join(parts)
    length = int(handler.headers.get("Content-Length") or 0)
    if length > MAX_BODY_BYTES:
        raise QueryError("request body too large", 1002)
    return handler.rfile.read(length) if length else b""


def _form_fields(content_type: str, body: bytes) -> dict[str, str]:
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (
                part.get_content() if part.get_content_maintype() == "text" else part.get_payload(decode=True).decode()
            )
    return fields


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
                body = _read_body(self)
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
                body = _decompress(body, self.headers.get("Content-Encoding", ""))
                if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
                    params.update(_form_fields(content_type, body))
                    body = b""
                req = Request(params, body)
                result, fmt, summary = server.execute(req)
            except QueryError as exc:
                message = str(exc) if str(exc).startswith("Code:") else f"Code: {exc.code}. DB::Exception: {exc}"
                self._send(
                    _http_status(exc.code),
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
