"""Read access for ``rankstream sql`` / ``runs``: through the owning sink's HTTP interface, else directly.

Through the interface the CLI is the store's admin: it reads the password from
the 0600 users file next to the store (``RANKSTREAM_STORE_PASSWORD`` wins).

An embedded chDB directory can be open in one process only; when a sink owns
it, readers go through that sink's HTTP interface (found via its port file).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rankstream.sinks.store import portfile, users
from rankstream.sinks.store.dsn import StoreError, open_store, parse_dsn

_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_RESULT_RE = re.compile(r"^\s*(\(\s*)*(SELECT|WITH|SHOW|DESC|DESCRIBE|EXISTS|EXPLAIN)\b", re.IGNORECASE)


def connect_reader(dsn: str) -> tuple[Any, str]:
    """A client for reading ``dsn`` and how it was reached ("http" via a running sink, or "direct")."""
    parsed = parse_dsn(dsn)
    if parsed.embedded and parsed.path is not None:
        server = portfile.find_server(parsed.path)
        if server is not None:
            try:
                return local_client(parsed.path, server), "http"
            except Exception as exc:
                raise StoreError(f"sink HTTP interface at {server[0]}:{server[1]} failed: {error_line(exc)}") from None
    return open_store(dsn), "direct"


def local_client(store_path: Path, server: tuple[str, int], **kwargs: Any) -> Any:
    """A clickhouse-connect client of the local server of ``store_path``, as its admin (password from the 0600 file)."""
    import clickhouse_connect

    tls = portfile.uses_tls(store_path)
    return clickhouse_connect.get_client(
        host=server[0],
        port=server[1],
        username=users.ADMIN,
        password=users.admin_password(store_path) or "",
        compress=False,
        secure=tls,
        verify=not tls,  # a local server's self-signed certificate
        **kwargs,
    )


def statement_kind(sql: str) -> str:
    """``"raw"`` (has its own FORMAT), ``"query"`` (returns rows) or ``"command"``."""
    stripped = _strip_comments(sql).strip().rstrip(";").strip()
    if _TRAILING_FORMAT_RE.search(stripped):
        return "raw"
    return "query" if _RESULT_RE.match(stripped) else "command"


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))


def error_line(exc: BaseException) -> str:
    """ClickHouse's own message from a clickhouse-connect error, on one line."""
    text = str(exc)
    idx = text.find("Code: ", text.find("server response:") if "server response:" in text else 0)
    if idx >= 0:
        text = text[idx:]
    text = re.sub(r"\s*\(for url [^)]*\)\s*$", "", text.strip())
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return " ".join(text.split())[:500] or type(exc).__name__
