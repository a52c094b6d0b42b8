"""Open the store named by a DSN: embedded chDB (``chdb:///path``) or a ClickHouse server (``http(s)://``).

One function so every entry point (sink, ``rankstream sql``, migrations,
tests) accepts the same DSNs and fails with the same one-line reasons.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rankstream.errors import ServiceUnavailable

DATABASE = "rankstream"


class StoreError(ServiceUnavailable):
    """The store cannot be opened or reached, or its DSN is malformed; the message is one line for the user."""


@dataclass(frozen=True)
class Dsn:
    """A parsed store DSN."""

    raw: str
    scheme: str  # "chdb", "http" or "https"
    path: Path | None  # chdb only: the data directory (absolute, resolved)

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"


def parse_dsn(dsn: str) -> Dsn:
    """Validate a DSN without connecting; raises :class:`StoreError` with the reason."""
    if not dsn or not isinstance(dsn, str):
        raise StoreError("empty store DSN (expected chdb:///abs/path or http(s)://host:port)")
    parsed = urlparse(dsn)
    scheme = parsed.scheme.lower()
    if scheme == "chdb":
        if parsed.netloc and parsed.netloc not in ("", "localhost"):
            raise StoreError(f"store DSN {dsn!r}: use chdb:///absolute/path (three slashes) for an on-disk store")
        if not parsed.path or parsed.path == "/":
            raise StoreError(f"store DSN {dsn!r}: missing the data directory path")
        return Dsn(dsn, "chdb", Path(os.path.realpath(parsed.path)))
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise StoreError(f"store DSN {dsn!r}: missing host")
        return Dsn(dsn, scheme, None)
    raise StoreError(f"store DSN {dsn!r}: unsupported scheme {parsed.scheme!r} (expected chdb, http or https)")


def open_store(dsn: str, **kwargs: Any) -> Any:
    """A clickhouse-connect client for ``dsn``; raises :class:`StoreError` when the DSN is bad or the store is down.

    For chDB the data directory is created if missing; chDB allows one process
    per directory, so a directory owned by another process is reported as such
    (query that process's HTTP interface instead, see ``rankstream sql``).
    """
    parsed = parse_dsn(dsn)
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        if parsed.embedded:
            assert parsed.path is not None
            parsed.path.mkdir(parents=True, exist_ok=True)
            return clickhouse_connect.get_client(dsn=f"chdb://{parsed.path}", **kwargs)
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("send_receive_timeout", 60)
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    except OSError as exc:
        raise StoreError(f"store {_redact(dsn)} unavailable: {exc}") from None
    except ClickHouseError as exc:
        first = _reason(exc)
        if parsed.embedded and ("lock" in first.lower() or "already" in first.lower() or "Unable to open" in first):
            raise StoreError(
                f"embedded store {parsed.path} is in use by another process ({first[:200]}); "
                "query the owning sink's HTTP interface instead"
            ) from None
        raise StoreError(f"store {_redact(dsn)} unavailable: {first[:300]}") from None
    except RuntimeError as exc:
        raise StoreError(f"store {_redact(dsn)} unavailable: {str(exc).splitlines()[0][:300]}") from None


def _reason(exc: BaseException) -> str:
    """The useful part of a client error: the OS error of a failed connection, else the first line."""
    text = str(exc).strip()
    match = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if match:
        return match.group(1).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quiet_client_logs() -> None:
    """Keep clickhouse-connect's and urllib3's own warnings out of CLI output (errors are reported once, by us)."""
    import logging

    for name in ("clickhouse_connect", "urllib3"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    parsed = urlparse(dsn)
    if parsed.password:
        return dsn.replace(f":{parsed.password}@", ":***@")
    return dsn
