"""ClickHouse's HTTP protocol, the side that needs no engine: parsing requests, and errors as ClickHouse shapes them.

Split from :mod:`.httpd` (which runs the requests on chDB) so the parsing can
be tested, and read, without a store.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Mapping
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler
from typing import cast

from rankstream.errors import OperationFailed

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


class QueryError(OperationFailed):
    """A failed query, carrying ClickHouse's error code (``code``) and message."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


def error_from_engine(exc: Exception) -> QueryError:
    """A chDB failure as a :class:`QueryError`: its ``code`` attribute when set, else the ``Code: N`` of its text.

    chDB's own ``ChdbError`` carries no code (only the text), unlike clickhouse-connect's errors.
    """
    text = str(exc).strip()
    idx = text.find("Code: ")
    if idx > 0:
        text = text[idx:]
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        match = _CODE_RE.search(text)
        code = int(match.group(1)) if match else 1002
    return QueryError(text or type(exc).__name__, code)


def http_status(code: int) -> int:
    if code in (62, 27, 36, 38, 46, 47, 53, 117, 344, 377):  # syntax / bad arguments / unknown identifiers
        return 400
    if code in (60, 81):  # unknown table / database
        return 404
    if code == 516:  # AUTHENTICATION_FAILED
        return 401
    if code in (164, 192, 193, 194, 195, 497):  # READONLY, unknown user / password, ACCESS_DENIED
        return 403
    return 500


def decompress(data: bytes, encoding: str) -> bytes:
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

    def __init__(self, params: dict[str, str], body: bytes, headers: Mapping[str, str] | None = None) -> None:
        headers = headers or {}  # names in lower case
        self.database = headers.get("x-clickhouse-database") or params.get("database") or None
        self.default_format = headers.get("x-clickhouse-format") or params.get("default_format") or "TabSeparated"
        self.readonly = params.get("readonly", "0") not in ("", "0")
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


_NATIVE_LZ4 = 0x82
_NATIVE_BLOCK = 1 << 20


def native_compress(data: bytes) -> bytes:
    """``data`` in ClickHouse's own compressed framing (the response to ``compress=1``, as the JDBC driver asks).

    Blocks of a checksum (CityHash128 of the rest), method 0x82 (LZ4), the
    compressed and decompressed sizes (little-endian UInt32, the 9 header bytes included
    in the first), and the LZ4 block.
    """
    import lz4.block
    from clickhouse_cityhash.cityhash import CityHash128

    out = bytearray()
    for start in range(0, max(len(data), 1), _NATIVE_BLOCK):
        chunk = data[start : start + _NATIVE_BLOCK]
        packed = lz4.block.compress(chunk, store_size=False)
        block = struct.pack("<BII", _NATIVE_LZ4, len(packed) + 9, len(chunk)) + packed
        checksum = CityHash128(block)
        out += struct.pack("<QQ", checksum >> 64, checksum & 0xFFFFFFFFFFFFFFFF) + block
    return bytes(out)


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
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


def form_fields(content_type: str, body: bytes) -> dict[str, str]:
    """The fields of a ``multipart/form-data`` body (clickhouse-connect's form-encoded parameters).

    Only multipart: as in ClickHouse, a ``application/x-www-form-urlencoded`` body
    (curl's default for ``--data-binary``) is the query itself, not fields.
    """
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (
                part.get_content()
                if part.get_content_maintype() == "text"
                else cast(bytes, part.get_payload(decode=True)).decode()  # a leaf part decodes to bytes
            )
    return fields
